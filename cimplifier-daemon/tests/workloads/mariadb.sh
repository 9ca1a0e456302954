#!/usr/bin/env bash
# The MariaDB case study's workload, as an application's client would run
# it: over TCP with the mariadb client, as the application's account
# (shop), it makes the schema, loads data, changes it in transactions
# (one committed, one rolled back), queries it (joins, aggregates, a view,
# an index, a stored procedure), and drops what it made. Every answer is
# printed; a wrong one stops the script with a non-zero status. Each pass
# starts by dropping the database the last pass left, so it runs any number
# of times. The server: $CIMPLIFIER_TARGET, port 3306.
set -euo pipefail
host=${CIMPLIFIER_TARGET:?CIMPLIFIER_TARGET must hold the server address}
host=${host#[}
host=${host%]}
db() {
  mariadb --host="$host" --port=3306 --user=shop --password=shop-secret \
    --connect-timeout=10 --batch --skip-column-names "$@"
}
fail() { echo "mariadb workload: FAILED: $*" >&2; exit 1; }
# Prints `label: answer` and checks the answer.
expect() {
  local label=$1 want=$2 got
  got=$(db shop -e "$3" | tr '\t\n' ' |' | sed 's/|$//') || fail "$label: the query failed"
  echo "$label: $got"
  [ "$got" = "$want" ] || fail "$label: wanted '$want', got '$got'"
}

for _ in $(seq 30); do db -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done
db -e 'DROP DATABASE IF EXISTS shop; CREATE DATABASE shop' || fail "could not make the database"
db shop <<'SQL' || fail "could not make the schema"
CREATE TABLE customers (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(64) NOT NULL UNIQUE,
  city VARCHAR(64) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE orders (
  id INT PRIMARY KEY AUTO_INCREMENT,
  customer_id INT NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  note TEXT,
  FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE,
  INDEX by_amount (amount)
) ENGINE=InnoDB;
CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(200)) ENGINE=Aria;
CREATE VIEW totals AS
  SELECT c.name, COUNT(o.id) AS n, SUM(o.amount) AS total
  FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.name;
CREATE PROCEDURE big_orders(IN floor_amount DECIMAL(10,2))
  SELECT COUNT(*) FROM orders WHERE amount >= floor_amount;
INSERT INTO customers (name, city) VALUES ('ada', 'London'), ('grace', 'Arlington'), ('edsger', 'Austin');
SET SESSION max_recursive_iterations = 10000;
INSERT INTO orders (customer_id, amount, note)
  WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000)
  SELECT 1 + n % 3, n / 10, REPEAT('x', n % 200) FROM s;
INSERT INTO audit (what) VALUES ('loaded 3000 orders');
SQL
echo "schema and data: made"

expect "customers" "3" "SELECT COUNT(*) FROM customers"
expect "orders" "3000 450150.00" "SELECT COUNT(*), SUM(amount) FROM orders"
expect "totals" "ada 1000 150150.00|edsger 1000 150050.00|grace 1000 149950.00" \
  "SELECT name, n, total FROM totals ORDER BY name"
expect "join" "London 1000|Arlington 1000|Austin 1000" \
  "SELECT c.city, COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.id ORDER BY c.id"
expect "index" "by_amount" \
  "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = 'shop' AND table_name = 'orders' AND index_name = 'by_amount'"
expect "procedure" "1001" "CALL big_orders(200)"

db shop -e "START TRANSACTION; UPDATE orders SET amount = amount + 1 WHERE customer_id = 1; \
  INSERT INTO audit (what) VALUES ('raised ada'); COMMIT;" || fail "the committed transaction failed"
db shop -e "START TRANSACTION; DELETE FROM orders; ROLLBACK;" || fail "the rolled-back transaction failed"
expect "after commit and rollback" "3000 451150.00" "SELECT COUNT(*), SUM(amount) FROM orders"
db shop -e "DELETE FROM customers WHERE name = 'edsger'" || fail "the delete failed"
expect "cascade" "2 2000" "SELECT (SELECT COUNT(*) FROM customers), (SELECT COUNT(*) FROM orders)"
expect "audit (Aria)" "loaded 3000 orders|raised ada" "SELECT what FROM audit ORDER BY id"
out=$(db shop -e "INSERT INTO customers (name, city) VALUES ('ada', 'Paris')" 2>&1) && fail "a duplicate name was accepted"
grep -q "^ERROR 1062 .*Duplicate entry 'ada'" <<<"$out" || fail "the duplicate was refused for another reason: $out"
echo "duplicate insert: $(grep -o "^ERROR 1062 .*" <<<"$out")"
db -e 'DROP DATABASE shop' || fail "could not drop the database"
echo "mariadb workload: passed"
