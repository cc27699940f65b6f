# aiconv — developer and operator recipes. `just` lists them.
# Compose recipes run from the repository root against compose/compose.yaml (+ compose.gpu.yaml);
# Kubernetes recipes against the namespace "aiconv" of the current kubectl context.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }
aiconv := if path_exists(".venv/bin/aiconv") == "true" { ".venv/bin/aiconv" } else { "aiconv" }
compose := "docker compose -f compose/compose.yaml"
compose_gpu := "docker compose -f compose/compose.yaml -f compose/compose.gpu.yaml"
image := env("AICONV_IMAGE", "aiconv:latest")
cuda_image := env("AICONV_CUDA_IMAGE", "aiconv-cuda:latest")
kube := "kubectl -n aiconv"

# list the recipes
default:
    @just --list --unsorted

# ---- development ------------------------------------------------------------------------------

# create .venv and install aiconv with its dev tools (wheels from ../shared/wheels when present)
setup:
    python3 -m venv .venv
    if [ -d ../shared/wheels ]; then \
        .venv/bin/pip install -e '.[dev]' --find-links ../shared/wheels; \
    else \
        .venv/bin/pip install -e '.[dev]'; \
    fi

# talk to the bot in the terminal (no Telegram needed)
demo:
    {{aiconv}} demo

# run every mode in one process (development, smallest installs)
run:
    {{aiconv}} all

# run the tests (extra pytest arguments pass through: just test tests/deploy -q)
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# lint, format check and type check
lint:
    {{python}} -m ruff check .
    {{python}} -m ruff format --check .
    {{python}} -m mypy

# install the tools of the deployment validations (nginx, promtool, kubectl, hadolint; as root)
deploy-tools:
    bash .ci/deploy-tools.sh

# regenerate the Kubernetes PrometheusRule from compose/prometheus/alerts.yml
sync-rules:
    {{python}} tests/deploy/sync_rules.py

# regenerate the KEDA triggers of the redis-cluster component (one per shard stream) from
# aiconv's key layout, after changing its REDIS_SHARDS or the keda thresholds
sync-keda:
    {{python}} tests/deploy/sync_keda.py

# run the benchmarks (each prints its figures beside its baseline)
bench:
    for b in jobs ml; do echo "== bench/$b.py"; {{python}} -m "bench.$b"; done

# N users through real web, worker and ml processes: just soak --users 1000 --rate 100
soak *ARGS:
    {{python}} -m bench.soak {{ARGS}}

# kill -9 a Redis Cluster primary under steady traffic (a cluster of its own on ports 7201-7206):
# just failover --users 50
failover *ARGS:
    {{python}} -m bench.failover {{ARGS}}

# drive webhook traffic at a deployment: just load https://bot.example.org 50 5 2m
load HOST USERS="20" SPAWN_RATE="5" DURATION="1m":
    @test -n "${TELEGRAM_WEBHOOK_SECRET:-}" || { echo "export TELEGRAM_WEBHOOK_SECRET first" >&2; exit 1; }
    {{python}} -m locust -f tests/load/locustfile.py --headless --host {{HOST}} \
        --users {{USERS}} --spawn-rate {{SPAWN_RATE}} --run-time {{DURATION}} --only-summary

# ---- images -----------------------------------------------------------------------------------

# build the CPU image (AICONV_IMAGE, default aiconv:latest)
build:
    docker build -t {{image}} .

# build the CUDA image (AICONV_CUDA_IMAGE, default aiconv-cuda:latest)
build-cuda:
    docker build -f Dockerfile.cuda -t {{cuda_image}} .

# ---- docker compose ---------------------------------------------------------------------------

# write compose/.env if there is none: random secrets, asks for TELEGRAM_BOT_TOKEN (or takes it
# from the environment); TELEGRAM_WEBHOOK_URL from the environment, empty: long polling
[no-exit-message]
env:
    @python3 compose/make-env.py

[private]
env-file:
    @test -f compose/.env || { echo "no compose/.env yet: just up (or just env) writes one" >&2; exit 1; }

# start the whole stack (first run: writes compose/.env; waits until every service is healthy)
up: env
    {{compose}} up -d --wait

# start the stack with the CUDA ml service on an NVIDIA GPU
up-gpu: env
    {{compose_gpu}} up -d --wait

# stop the stack (volumes are kept; `docker compose -f compose/compose.yaml down -v` deletes them)
down:
    {{compose}} down

# follow the logs (all services, or the ones named)
logs *SERVICES:
    {{compose}} logs -f --tail=200 {{SERVICES}}

# list the services and their health
ps:
    {{compose}} ps

# run N replicas of a service: just scale worker 4
scale SERVICE N:
    {{compose}} up -d --no-deps --wait --scale {{SERVICE}}={{N}} {{SERVICE}}
    # nginx resolves "web" when it starts: make it see the new replicas
    if [ "{{SERVICE}}" = web ]; then {{compose}} exec nginx nginx -s reload; fi

# apply the database migrations (idempotent)
migrate: env
    {{compose}} run --rm migrate

# pg_dump the database into compose/backups/ (custom format)
backup: env-file
    mkdir -p compose/backups
    {{compose}} --profile ops run --rm backup

# restore a pg_dump file into the database (stops web, worker and ml meanwhile)
restore FILE: env-file
    @test -f "{{FILE}}" || { echo "no such file: {{FILE}}" >&2; exit 1; }
    {{compose}} stop web worker ml
    {{compose}} exec -T postgres sh -c 'pg_restore --clean --if-exists --no-owner -U "$POSTGRES_USER" -d "$POSTGRES_DB"' < "{{FILE}}"
    {{compose}} up -d --wait web worker ml

# ---- Kubernetes -------------------------------------------------------------------------------

# render and apply an overlay (dev, production, gpu), then wait for the rollout
deploy OVERLAY:
    @test -d k8s-kustomize/overlays/{{OVERLAY}} || { echo "overlays: $(ls k8s-kustomize/overlays)" >&2; exit 1; }
    @if [ "{{OVERLAY}}" = dev ]; then k8s-kustomize/overlays/dev/make-secrets.sh; fi
    kubectl apply -k k8s-kustomize/overlays/{{OVERLAY}}
    for d in web worker ml; do {{kube}} rollout status deployment/aiconv-$d --timeout=10m; done

# show the deployments, pods, autoscalers, services, ingress, backups
status:
    {{kube}} get deployments,pods,hpa,services,ingress,cronjobs,pvc -o wide
    -{{kube}} get scaledobjects 2>/dev/null
    -{{kube}} top pods 2>/dev/null

# roll a component (web, worker, ml) back to its previous revision
rollout-undo COMPONENT="web":
    {{kube}} rollout undo deployment/aiconv-{{COMPONENT}}
    {{kube}} rollout status deployment/aiconv-{{COMPONENT}} --timeout=10m

# run the backup CronJob now and wait for it
k8s-backup:
    job="aiconv-db-backup-manual-$(date +%Y%m%d%H%M%S)"; \
    {{kube}} create job --from=cronjob/aiconv-db-backup "$job"; \
    {{kube}} wait --for=condition=complete "job/$job" --timeout=60m; \
    {{kube}} logs "job/$job"
