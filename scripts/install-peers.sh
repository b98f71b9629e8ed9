#!/bin/sh
# Installs the real peers the tests and benchmarks start (Debian 12, as root). Idempotent.
#   browsers: chromium (+driver), firefox-esr (+certutil)
#   SIP:      kamailio (upstream proxy with digest auth), baresip (phone), sip-tester (SIPp)
#   media:    rtpengine-daemon (benchmark yardstick)
#   build:    gcc, libssl-dev (the benchmark's C packet blaster, also built by the CI smoke test)
set -eu
PKGS="chromium chromium-driver firefox-esr libnss3-tools kamailio kamailio-sqlite-modules sip-tester baresip rtpengine-daemon iproute2 sox gcc libssl-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-peers: need root to apt-get install:$missing" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # the rtpengine package's postinst must not start the daemon; tests start their own
  [ -e /usr/sbin/policy-rc.d ] || { printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get install -y -q --no-install-recommends $missing
fi
