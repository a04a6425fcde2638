#!/usr/bin/env bash
# Install what the side-by-side benchmarks (tests/bench, `make bench`) compare Lienthong
# with, from Debian's packages: Postfix, Dovecot IMAP, age and OpenSSL.
#
# Only the programs are needed: the benchmark runs its own private Postfix and Dovecot
# instances (own config folders, loopback only, free ports) and stops them afterwards.
# The system services are neither configured nor started here: Postfix is installed with
# "No configuration", and where a service was started by the package anyway it is stopped
# again so nothing listens on a public interface.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] || missing+=(postfix)
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-core)
[ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
command -v age >/dev/null 2>&1 || missing+=(age)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "installing benchmark peers from Debian: ${missing[*]}" >&2
echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
echo "postfix postfix/mailname string bench.invalid" | as_root debconf-set-selections
# Other jobs may be installing packages too: wait for dpkg's lock rather than fail.
lock=(-o DPkg::Lock::Timeout=600)
as_root apt-get "${lock[@]}" update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get "${lock[@]}" install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null

# The benchmark never uses the system instances: make sure none was left running.
for svc in postfix dovecot; do
  if command -v service >/dev/null 2>&1; then
    as_root service "$svc" stop >/dev/null 2>&1 || true
  fi
done
