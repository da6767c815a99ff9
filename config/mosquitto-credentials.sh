#!/bin/sh
# docker-compose's one-shot `credentials` service: writes the broker's password file (hashed by
# mosquitto_passwd) and the simulator's sensor logins into the `credentials` volume. The
# service logins' passwords come from .env; every sensor of the registry logs in with its id
# and a random password of its own, made afresh at each start (the simulator reads them from
# the same volume; real sensors are given theirs by whoever installs them).
# CREDENTIALS_DIR and REGISTRY let the tests run it outside the container.
set -eu
out=${CREDENTIALS_DIR:-/credentials}
registry=${REGISTRY:-/floodwatch/sensors.geojson}
umask 077
ids=$(sed -n 's/.*"id": *"\([a-z0-9][a-z0-9_-]*\)".*/\1/p' "$registry")
logins=""
for id in $ids; do
  # 24 characters from 18 random bytes, kept to letters and digits.
  secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=\n')
  logins="$logins $id:$secret"
done
{
  echo "admin:${MQTT_ADMIN_PASSWORD}"
  echo "ingest:${MQTT_INGEST_PASSWORD}"
  echo "api:${MQTT_API_PASSWORD}"
  echo "notify:${MQTT_NOTIFY_PASSWORD}"
  for login in $logins; do echo "$login"; done
} > "$out/mosquitto.passwd"
mosquitto_passwd -U "$out/mosquitto.passwd"
{
  printf '{'
  sep=''
  for login in $logins; do
    printf '%s"%s": "%s"' "$sep" "${login%%:*}" "${login#*:}"
    sep=', '
  done
  printf '}\n'
} > "$out/sensors.json"
# The broker runs as the image's `mosquitto` user (uid 1883), the simulator as uid 10001 (see
# the Dockerfile).
chown 1883:1883 "$out/mosquitto.passwd"
chown 10001 "$out/sensors.json"
