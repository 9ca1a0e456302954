#!/usr/bin/env bash
# The WordPress case study's workload, over HTTP with curl: install the
# site, log in, create posts, comment, edit the profile, log out. Every
# step checks what the site answered and the script fails on the first
# that is wrong. It runs any number of times: a site installed already is
# not installed again. Lines starting with `answer:` are what two runs of
# the same steps must answer alike (status codes, and the text of the
# pages with the site's address, dates, times and nonces replaced); the
# tests compare them between the original and the partitioned system.
# Usage: wordpress.sh http://HOST, or wordpress.sh with the host in
# $CIMPLIFIER_TARGET.
set -euo pipefail
site=${1:-http://${CIMPLIFIER_TARGET:?usage: wordpress.sh http://HOST, or set CIMPLIFIER_TARGET}}
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
c() { curl -sS --max-time 60 -b "$jar" -c "$jar" "$@"; }
step() { echo "workload: $*"; }
fail() { echo "workload: FAILED: $*" >&2; exit 1; }
# Whether the page at $1 contains $2 (read whole: grep -q would cut curl off).
shows() { local page; page=$(c -L "$1"); grep -qF -- "$2" <<<"$page"; }
answer() { echo "answer: $*"; }
# The visible text of the page at $1 (scripts, styles and tags left out),
# with what differs between two sites serving the same content replaced.
text_of() {
  c -L "$1" | python3 -c '
import html.parser, re, sys
class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.skip, self.out = 0, []
    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")
    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style") and self.skip > 0
    def handle_data(self, data):
        if not self.skip and data.strip():
            self.out.append(" ".join(data.split()))
t = Text()
t.feed(sys.stdin.read())
text = "\n".join(t.out).replace(sys.argv[1], "<site>")
text = re.sub(r"\b[A-Z][a-z]+ \d{1,2}, \d{4}\b", "<date>", text)
text = re.sub(r"\b\d{1,2}:\d\d ?(am|pm|AM|PM)?", "<time>", text)
print(text)
' "${site#http://}"
}

# As a load balancer's health check would: the site is ready when PHP
# answers (nginx alone answers 502 while php-fpm or the database start).
step "wait until the site answers"
for _ in $(seq 1 90); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$site/wp-admin/install.php" || true)
  case $code in 2*|3*) break ;; esac
  sleep 1
done
case $code in 2*|3*) ;; *) fail "the site never answered (last status $code)" ;; esac

step "install"
page=$(c "$site/wp-admin/install.php")
if grep -q "Already Installed" <<<"$page"; then
  answer "install: installed already"
else
out=$(c "$site/wp-admin/install.php?step=2" \
  --data-urlencode weblog_title="cimplifier case study" \
  --data-urlencode user_name=admin \
  --data-urlencode admin_password=correct-horse-battery \
  --data-urlencode admin_password2=correct-horse-battery \
  --data-urlencode pw_weak=1 \
  --data-urlencode admin_email=admin@example.com \
  --data-urlencode blog_public=0)
grep -q "Success!" <<<"$out" || fail "install did not succeed: $(head -c 300 <<<"$out")"
answer "install: done"
fi

step "log in"
c -o /dev/null "$site/wp-login.php"
code=$(c -o /dev/null -w '%{http_code}' "$site/wp-login.php" \
  --data-urlencode log=admin --data-urlencode pwd=correct-horse-battery \
  --data-urlencode wp-submit="Log In" --data-urlencode testcookie=1 \
  --data-urlencode redirect_to="$site/wp-admin/")
[ "$code" = 302 ] || fail "login answered $code, not a redirect"
answer "login: $code"
shows "$site/wp-admin/" "Dashboard" || fail "the dashboard is not shown after login"
nonce=$(c "$site/wp-admin/admin-ajax.php?action=rest-nonce")
[ -n "$nonce" ] && [ "$nonce" != 0 ] || fail "no REST nonce for the logged-in user"

step "create posts"
ids=()
for i in 1 2 3; do
  out=$(c -H "X-WP-Nonce: $nonce" -H 'Content-Type: application/json' \
    "$site/?rest_route=/wp/v2/posts" \
    -d "{\"title\":\"Post $i\",\"content\":\"Body of post $i\",\"status\":\"publish\"}")
  id=$(grep -o '"id":[0-9]*' <<<"$out" | sed -n '1s/.*://p' || true)
  [ -n "$id" ] || fail "post $i was not created: $(head -c 300 <<<"$out")"
  ids+=("$id")
  answer "post $i: id $id"
done
shows "$site/?p=${ids[0]}" "Body of post 1" || fail "post ${ids[0]} does not show its body"

step "comment"
code=$(c -o /dev/null -w '%{http_code}' "$site/wp-comments-post.php" \
  --data-urlencode comment_post_ID="${ids[0]}" \
  --data-urlencode comment="A comment from the workload")
[ "$code" = 302 ] || fail "commenting answered $code, not a redirect"
answer "comment: $code"
shows "$site/?p=${ids[0]}" "A comment from the workload" || fail "the comment is not shown"

step "edit the profile"
out=$(c -H "X-WP-Nonce: $nonce" -H 'Content-Type: application/json' \
  "$site/?rest_route=/wp/v2/users/me" -d '{"description":"Edited by the workload"}')
grep -q "Edited by the workload" <<<"$out" || fail "the profile was not updated: $(head -c 300 <<<"$out")"
shows "$site/wp-admin/profile.php" "Edited by the workload" || fail "profile.php does not show the edit"

step "log out"
dashboard=$(c "$site/wp-admin/")
# The nonce of the admin bar's logout link (its & is escaped as &#038;).
logout_nonce=$(grep -o 'action=logout&#038;_wpnonce=[0-9a-f]*' <<<"$dashboard" | sed -n '1s/.*=//p' || true)
[ -n "$logout_nonce" ] || fail "no logout link on the dashboard"
logout="wp-login.php?action=logout&_wpnonce=$logout_nonce"
c -o /dev/null "$site/$logout"
code=$(c -o /dev/null -w '%{http_code}' "$site/wp-admin/")
[ "$code" = 302 ] || fail "after logout wp-admin answered $code, not a redirect to the login"
answer "wp-admin after logout: $code"

step "read the site as a visitor"
text_of "$site/" | sed 's/^/answer: home: /'
text_of "$site/?p=${ids[0]}" | sed 's/^/answer: post: /'
code=$(c -o /dev/null -w '%{http_code}' "$site/?p=999999")
answer "a missing post: $code"

step "passed"
