#!/usr/bin/env bash
# The WordPress case study's workload, over HTTP with curl: install the
# site, log in, create posts, comment, edit the profile, log out. Every
# step checks what the site answered and the script fails on the first
# that is wrong. Usage: wordpress.sh http://HOST
set -euo pipefail
site=${1:?usage: wordpress.sh http://HOST}
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
c() { curl -sS --max-time 60 -b "$jar" -c "$jar" "$@"; }
step() { echo "workload: $*"; }
fail() { echo "workload: FAILED: $*" >&2; exit 1; }
# Whether the page at $1 contains $2 (read whole: grep -q would cut curl off).
shows() { local page; page=$(c -L "$1"); grep -qF -- "$2" <<<"$page"; }

step "install"
c -o /dev/null "$site/wp-admin/install.php"
out=$(c "$site/wp-admin/install.php?step=2" \
  --data-urlencode weblog_title="cimplifier case study" \
  --data-urlencode user_name=admin \
  --data-urlencode admin_password=correct-horse-battery \
  --data-urlencode admin_password2=correct-horse-battery \
  --data-urlencode pw_weak=1 \
  --data-urlencode admin_email=admin@example.com \
  --data-urlencode blog_public=0)
grep -q "Success!" <<<"$out" || fail "install did not succeed: $(head -c 300 <<<"$out")"

step "log in"
c -o /dev/null "$site/wp-login.php"
code=$(c -o /dev/null -w '%{http_code}' "$site/wp-login.php" \
  --data-urlencode log=admin --data-urlencode pwd=correct-horse-battery \
  --data-urlencode wp-submit="Log In" --data-urlencode testcookie=1 \
  --data-urlencode redirect_to="$site/wp-admin/")
[ "$code" = 302 ] || fail "login answered $code, not a redirect"
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
done
shows "$site/?p=${ids[0]}" "Body of post 1" || fail "post ${ids[0]} does not show its body"

step "comment"
code=$(c -o /dev/null -w '%{http_code}' "$site/wp-comments-post.php" \
  --data-urlencode comment_post_ID="${ids[0]}" \
  --data-urlencode comment="A comment from the workload")
[ "$code" = 302 ] || fail "commenting answered $code, not a redirect"
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

step "passed"
