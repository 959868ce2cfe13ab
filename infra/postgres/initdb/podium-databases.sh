#!/usr/bin/env bash
# Create podium's databases, one per role and one per executor pool: the names in
# PODIUM_DATABASES (space-separated; docker-compose.yml sets it on the postgres service).
#
# The postgres image runs this from /docker-entrypoint-initdb.d on its first start (an
# empty data volume) only. It creates only what is missing, so after adding a pool run it
# again on the running server:
#   docker compose exec postgres /docker-entrypoint-initdb.d/podium-databases.sh
# The services create their tables themselves (migrations at start-up).
set -euo pipefail
: "${PODIUM_DATABASES:?PODIUM_DATABASES names the databases to create}"

for db in $PODIUM_DATABASES; do
  # %I quotes the name (a pool may contain '-'); \gexec runs the CREATE only when the
  # SELECT returns it, because CREATE DATABASE has no IF NOT EXISTS.
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
  echo "podium-databases: $db"
done
