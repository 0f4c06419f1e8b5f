#!/usr/bin/env bash
# Creates the three databases of a bitsweep deployment, each owned by a role of its own:
#   mlflow    (role mlflow)    the MLflow tracking server's backend store
#   optuna    (role optuna)    the Optuna storage of every sweep
#   bitsweep  (role bitsweep)  the bitsweep service's own database
# The postgres image runs this once, from /docker-entrypoint-initdb.d, when its data volume is
# empty. The passwords come from the container's environment (deploy/compose.yaml).
set -eo pipefail

create() {
    local name=$1 password=$2
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        --set=name="$name" --set=password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
}

create mlflow "${MLFLOW_DB_PASSWORD:?}"
create optuna "${OPTUNA_DB_PASSWORD:?}"
create bitsweep "${SERVICE_DB_PASSWORD:?}"
