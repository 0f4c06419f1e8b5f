"""deploy/ checked against docs/deploy.md, the README, .ci/run and itself: the compose file, its
env example, the Dockerfile and the KubeRay manifests.

KubeRay's CRD schemas are not to be had here: no installed or pip-installable package ships them
or a Python model of them (PyPI has no KubeRay client; `ray` bundles no CRD, only the reader of
a RayCluster that its autoscaler runs). So the fields KubeRay's ray.io/v1 CRDs require, and the
rules its operator validates before it creates pods, are checked by hand:

- RayCluster: spec.headGroupSpec with rayStartParams and template.spec.containers;
  spec.workerGroupSpecs[*] with groupName, replicas, minReplicas <= replicas <= maxReplicas,
  rayStartParams and template.spec.containers (the CRDs require rayStartParams up to KubeRay 1.3;
  later ones make it optional, and the manifests set it anyway); the Ray container first
  (KubeRay sets the token on container 0); a name of at most 53 characters (DNS-1035);
  authOptions.mode token with a rayVersion of 2.53 or later (token auth needs 2.52; below 2.53
  KubeRay probes Ray pods with wget, which the image lacks).
- RayJob: spec.entrypoint, and exactly one of rayClusterSpec (checked as a RayCluster's spec)
  and clusterSelector.

Ray's own reader of a RayCluster (`ray.autoscaler._private.kuberay.autoscaling_config`, what
the in-tree autoscaler runs) then derives the node types, and must find the GPU group.

Each check is a function that returns the problems it finds. The tests run each one on the real
files, where it must find none, and on a broken copy, where it must find the break.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOC = ROOT / "docs" / "deploy.md"

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET")
PLACEHOLDER = "REPLACE_ME"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}, $VAR
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]*)@")
REQUIRED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
GPU = "nvidia.com/gpu"

Problems = list[str]


# -- reading the files -------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def load_env_example() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"env.example: {line!r} is not NAME=value"
            env[name.strip()] = value.strip()
    return env


def load_manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted(K8S.glob("*.yaml"))
    }


def one(manifests: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = [d for docs in manifests.values() for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} manifests of kind {kind}"
    return found[0]


def doc_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text`: rows of cells, the header row first."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def doc_table(first_header: str) -> list[list[str]]:
    """The body rows of the table in docs/deploy.md whose first header cell is `first_header`."""
    found = [t for t in doc_tables(DOC.read_text()) if t[0][0] == first_header]
    assert len(found) == 1, f"docs/deploy.md has {len(found)} tables headed '{first_header}'"
    return found[0][1:]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def interpolations(obj: Any) -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every interpolation in `obj`'s strings ($$ is a literal $)."""
    out = []
    for s in strings(obj):
        for m in INTERPOLATION.finditer(s.replace("$$", "")):
            if m["bare"]:
                out.append((m["bare"], "", ""))
            else:
                out.append((m["name"], m["op"] or "", m["arg"] or ""))
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each of a compose service's volumes."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, _, rest = v.partition(":")
            out[rest.split(":")[0]] = source
        else:
            out[v["target"]] = v.get("source", "")
    return out


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- compose -----------------------------------------------------------------------------------


def doc_service_problems(compose: dict[str, Any], rows: list[list[str]]) -> Problems:
    described = {ticked(r[0])[0] for r in rows if ticked(r[0])}
    defined = set(compose.get("services", {}))
    return [
        f"compose service {s} is not in docs/deploy.md" for s in sorted(defined - described)
    ] + [
        f"docs/deploy.md describes {s}, which compose.yaml lacks"
        for s in sorted(described - defined)
    ]


def healthcheck_problems(compose: dict[str, Any]) -> Problems:
    problems = []
    for name, svc in compose["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        if svc.get("healthcheck", {}).get("disable") or not test:
            problems.append(f"{name} has no health check")
        elif isinstance(test, list) and test[0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"{name}: health check test starts with {test[0]!r}")
    return problems


def depends_problems(compose: dict[str, Any]) -> Problems:
    problems = []
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for dep, how in deps.items():
            if dep not in services:
                problems.append(f"{name} depends on {dep}, which is not a service")
            elif how.get("condition") != "service_healthy":
                problems.append(f"{name} does not wait for {dep} to be healthy")
    return problems


def secret_problems(compose: dict[str, Any]) -> Problems:
    """Every password and token comes from a required ${VAR:?...}: none is written in the file,
    none has a default."""
    problems = []
    for name, op, _ in interpolations(compose):
        if SECRET_NAME.search(name) and op != ":?":
            problems.append(f"${{{name}}} is a secret but not required with :? (op {op!r})")
    for svc_name, svc in compose["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and not REQUIRED.fullmatch(value):
                problems.append(f"{svc_name}: {key} is not a ${{VAR:?...}} interpolation")
    for s in strings(compose):
        for m in URL_PASSWORD.finditer(REQUIRED.sub("<required>", s)):
            if m["password"] != "<required>":
                problems.append(f"a URL holds a password that is not interpolated: {s}")
    return problems


def volume_problems(compose: dict[str, Any]) -> Problems:
    declared = set(compose.get("volumes") or {})
    used, problems = set(), []
    for name, svc in compose["services"].items():
        for target, source in mounts(svc).items():
            if source.startswith((".", "/", "~")):
                continue  # a bind mount of a file of this repository
            used.add(source)
            if source not in declared:
                problems.append(f"{name} mounts {source} at {target}, an undeclared volume")
    return problems + [f"volume {v} is declared but never mounted" for v in sorted(declared - used)]


def gpu_problems(compose: dict[str, Any]) -> Problems:
    worker = compose["services"].get("ray-gpu-worker", {})
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    ok = [
        d for d in devices or [] if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities")
    ]
    command = " ".join(worker.get("command", []))
    problems = [] if ok else ["ray-gpu-worker reserves no nvidia GPU"]
    if not re.search(r"ray start --address[= ]ray-head:6379 .*--block", command):
        problems.append(f"ray-gpu-worker does not join the head: {command!r}")
    return problems


def ray_problems(compose: dict[str, Any]) -> Problems:
    """The head, the workers and the service: token auth, the service pointed at the head, and
    BITSWEEP_HOME and Tune's storage_path on one volume, at one path, in all of them."""
    s = compose["services"]
    problems = []
    head = " ".join(s["ray-head"]["command"])
    if not re.search(r"ray start --head --block .*--dashboard-host=0\.0\.0\.0", head):
        problems.append(f"ray-head does not run the head: {head!r}")
    for name in ("ray-head", "ray-gpu-worker", "bitsweep"):
        env = environment(s[name])
        if env.get("RAY_AUTH_MODE") != "token" or "RAY_AUTH_TOKEN" not in env:
            problems.append(f"{name} lacks RAY_AUTH_MODE=token with RAY_AUTH_TOKEN")
    service = environment(s["bitsweep"])
    expected = {
        "BITSWEEP_RAY_ADDRESS": "http://ray-head:8265",
        "BITSWEEP_TRACKING_URI": "http://mlflow:5000",
    }
    for key, value in expected.items():
        if service.get(key) != value:
            problems.append(f"bitsweep: {key}={service.get(key)!r}, not {value}")
    for key in ("BITSWEEP_DATABASE_URL", "BITSWEEP_OPTUNA_STORAGE", "BITSWEEP_TOKENS"):
        if key not in service:
            problems.append(f"bitsweep: {key} is not set")
    command = " ".join(s["bitsweep"]["command"])
    if not re.fullmatch(r"bitsweep serve --host[= ]0\.0\.0\.0.*", command):
        problems.append(f"bitsweep does not serve on 0.0.0.0: {command!r}")
    for key in ("BITSWEEP_STORAGE_PATH", "BITSWEEP_HOME"):
        path = service.get(key, "")
        volumes = [
            {src for dst, src in mounts(s[n]).items() if under(path, dst)}
            for n in ("bitsweep", "ray-head", "ray-gpu-worker")
        ]
        if not volumes[0] or any(v != volumes[0] for v in volumes):
            problems.append(f"{key}={path!r} is not on one volume of the service, head, workers")
    if environment(s["ray-head"]).get("BITSWEEP_HOME") != service.get("BITSWEEP_HOME"):
        problems.append("the head's BITSWEEP_HOME differs from the service's")
    return problems


def env_example_problems(compose: dict[str, Any], env: dict[str, str]) -> Problems:
    problems = []
    seen = {}
    for name, op, arg in interpolations(compose):
        seen.setdefault(name, (op, arg))
    for name, (op, arg) in seen.items():
        if name not in env:
            problems.append(f"env.example lacks {name}, which compose.yaml interpolates")
        elif SECRET_NAME.search(name) and PLACEHOLDER not in env[name]:
            problems.append(f"env.example gives the secret {name} a value, not {PLACEHOLDER}")
        elif op in (":-", "-") and env[name] != arg:
            problems.append(f"env.example: {name}={env[name]!r}, compose's default is {arg!r}")
    for name in sorted(set(env) - set(seen)):
        problems.append(f"env.example has {name}, which compose.yaml never reads")
    return problems


# -- the Dockerfile ----------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), " ".join(rest.split())))
            current = ""
    return out


def readme_torch() -> set[str]:
    found = set()
    for path in (ROOT / "README.md", ROOT / ".ci" / "run"):
        found |= set(re.findall(r"pip install (?:--quiet )?torch==(\S+)", path.read_text()))
    return found


def packages() -> list[str]:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [p.rstrip("*") for p in meta["tool"]["setuptools"]["packages"]["find"]["include"]]


def dockerfile_problems(text: str, torch: set[str], ignore: str) -> Problems:
    steps = instructions(text)
    args = dict(a.partition("=")[::2] for word, a in steps if word == "ARG")
    problems = []
    if len(torch) != 1:
        problems.append(f"README.md and .ci/run pin torch at {sorted(torch)}, not at one version")
    if {args.get("TORCH_VERSION")} != torch:
        problems.append(f"TORCH_VERSION={args.get('TORCH_VERSION')}, the README pins {torch}")
    if not args.get("TORCH_INDEX", "").endswith("/whl/cpu"):
        problems.append(f"the default torch index is not the CPU one: {args.get('TORCH_INDEX')}")
    runs = [a for word, a in steps if word == "RUN"]
    torch_step = next(
        (
            i
            for i, r in enumerate(runs)
            if re.search(r'pip install .*"?torch==\$\{TORCH_VERSION\}', r)
        ),
        None,
    )
    project_step = next(
        (i for i, r in enumerate(runs) if re.search(r"pip install (--\S+ )*\.$", r)), None
    )
    if torch_step is None or project_step is None or torch_step > project_step:
        problems.append("the install is not torch==${TORCH_VERSION} first, then `pip install .`")
    if sum(bool(re.search(r"pip install", r)) for r in runs) != 2:
        problems.append("the image installs something besides torch and bitsweep")
    copied = " ".join(a for word, a in steps if word == "COPY" and "--from" not in a)
    for name in ["pyproject.toml", "README.md", *packages()]:
        if not re.search(rf"(^|\s){re.escape(name)}(\s|$)", copied):
            problems.append(f"the Dockerfile does not copy {name}")
        if f"!{name}" not in ignore.split() and f"!{name}/" not in ignore.split():
            problems.append(f"Dockerfile.dockerignore keeps {name} out of the context")
    if ignore.split()[:1] != ["*"]:
        problems.append("Dockerfile.dockerignore does not start by excluding everything")
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    user = steps[users[-1]][1] if users else "root"
    if user.split(":")[0] in ("root", "0"):
        problems.append(f"the image runs as {user}")
    elif not any(word == "WORKDIR" for word, _ in steps[users[-1] :]):
        problems.append("no WORKDIR for the user")
    return problems


def python_match_problems(dockerfile: str, compose: dict[str, Any]) -> Problems:
    """The CPU and the CUDA image are built on one Ubuntu release, so both have its Python: Ray
    refuses a node whose Python version differs from the head's."""
    args = dict(a.partition("=")[::2] for w, a in instructions(dockerfile) if w == "ARG")
    base = args.get("BASE_IMAGE", "")
    cuda = compose["services"]["ray-gpu-worker"]["build"]["args"]["BASE_IMAGE"]
    cuda_default = dict((n, a) for n, _, a in interpolations(cuda)).get("CUDA_BASE_IMAGE", cuda)
    m = re.fullmatch(r"ubuntu:(\d+\.\d+)", base)
    if not m or not cuda_default.endswith(f"-ubuntu{m[1]}"):
        return [f"CPU base {base!r} and CUDA base {cuda_default!r} are not one Ubuntu release"]
    return []


# -- Kubernetes --------------------------------------------------------------------------------


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayJob":
        spec = spec.get("rayClusterSpec", {})
    if doc["kind"] in ("RayCluster", "RayJob"):
        yield "head", spec.get("headGroupSpec", {}).get("template", {})
        for g in spec.get("workerGroupSpecs", []):
            yield g.get("groupName", "?"), g.get("template", {})
    elif doc["kind"] == "Deployment":
        yield "service", doc["spec"]["template"]


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def ray_cluster_spec_problems(spec: dict[str, Any], where: str) -> Problems:
    problems = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [f"{where}: no headGroupSpec"]
    groups = [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])
    ]
    if len(groups) < 2:
        problems.append(f"{where}: no workerGroupSpecs")
    for name, group in groups:
        params = group.get("rayStartParams")
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{where}.{name}: rayStartParams is not a map of strings")
        containers = group.get("template", {}).get("spec", {}).get("containers") or []
        if not containers or not all(c.get("name") and c.get("image") for c in containers):
            problems.append(f"{where}.{name}: template.spec.containers needs a name and image")
        elif not re.fullmatch(r"ray-(head|worker)", containers[0]["name"]):
            problems.append(f"{where}.{name}: the Ray container is not the first")
    for name, group in groups[1:]:
        if not group.get("groupName"):
            problems.append(f"{where}.{name}: no groupName")
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if (
            not all(isinstance(c, int) for c in counts)
            or not 0 <= counts[0] <= counts[1] <= counts[2]
        ):
            problems.append(f"{where}.{name}: not 0 <= minReplicas <= replicas <= maxReplicas")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}: enableInTreeAutoscaling is not true")
    gpu_groups = [
        g
        for _, g in groups[1:]
        if any(
            GPU in c.get("resources", {}).get("limits", {})
            for c in g.get("template", {}).get("spec", {}).get("containers", [])
        )
    ]
    if not gpu_groups:
        problems.append(f"{where}: no worker group with {GPU} limits")
    if any(g.get("minReplicas", 0) < 1 for g in gpu_groups):
        problems.append(f"{where}: a GPU group may scale to 0: bitsweep refuses GPU sweeps then")
    for name, group in groups:
        if not group.get("template", {}).get("spec", {}).get("nodeSelector"):
            problems.append(f"{where}.{name}: no nodeSelector")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append(f"{where}: authOptions.mode is not token")
    if version_tuple(str(spec.get("rayVersion", ""))) < (2, 53, 0):
        problems.append(f"{where}: rayVersion {spec.get('rayVersion')!r} is not 2.53 or later")
    return problems


def raycluster_problems(doc: dict[str, Any]) -> Problems:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayCluster":
        problems.append(f"not a ray.io/v1 RayCluster: {doc.get('apiVersion')} {doc.get('kind')}")
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,51}[a-z0-9])?", name):
        problems.append(f"RayCluster name {name!r} is not DNS-1035 of at most 53 characters")
    return problems + ray_cluster_spec_problems(doc.get("spec", {}), "RayCluster.spec")


def rayjob_problems(doc: dict[str, Any], configmaps: list[dict[str, Any]]) -> Problems:
    from schemas.sweep import SweepSpec

    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayJob":
        problems.append(f"not a ray.io/v1 RayJob: {doc.get('apiVersion')} {doc.get('kind')}")
    spec = doc.get("spec", {})
    entry = spec.get("entrypoint")
    m = re.fullmatch(r"bitsweep sweep (\S+)( --resume)?", entry or "")
    if not m:
        return [*problems, f"RayJob entrypoint {entry!r} is not `bitsweep sweep SPEC`"]
    if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
        problems.append("RayJob needs exactly one of rayClusterSpec and clusterSelector")
    if "rayClusterSpec" not in spec:
        return problems
    problems += ray_cluster_spec_problems(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    by_name = {c["metadata"]["name"]: c for c in configmaps}
    for mount in head["containers"][0].get("volumeMounts", []):
        cm = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        if cm and under(m[1], mount["mountPath"]):
            key = m[1][len(mount["mountPath"]) :].strip("/")
            text = by_name.get(cm, {}).get("data", {}).get(key)
            if text is None:
                return [*problems, f"ConfigMap {cm} has no key {key} for the entrypoint"]
            SweepSpec.model_validate(yaml.safe_load(text))  # raises on a spec bitsweep refuses
            return problems
    return [*problems, f"the head does not mount a ConfigMap holding {m[1]}"]


def deployment_problems(dep: dict[str, Any], svc: dict[str, Any]) -> Problems:
    problems = []
    if dep.get("apiVersion") != "apps/v1" or svc.get("apiVersion") != "v1":
        problems.append("the Deployment is not apps/v1 or the Service not v1")
    if (
        dep["spec"].get("replicas") != 1
        or dep["spec"].get("strategy", {}).get("type") != "Recreate"
    ):
        problems.append("the service must run as one replica, replaced by Recreate")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if dep["spec"]["selector"]["matchLabels"].items() - labels.items():
        problems.append("the Deployment's selector does not match its pods")
    if not svc["spec"]["selector"] or svc["spec"]["selector"].items() - labels.items():
        problems.append("the Service's selector does not match the Deployment's pods")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container.get("command", []) + container.get("args", []))
    m = re.fullmatch(r"bitsweep serve --host[= ]0\.0\.0\.0(?: --port[= ](\d+))?", command)
    if not m:
        return [*problems, f"the container does not run `bitsweep serve`: {command!r}"]
    port = int(m[1] or 8000)
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    probe = container.get("readinessProbe", {}).get("httpGet", {})
    if probe.get("path") != "/health" or ports.get(probe.get("port"), probe.get("port")) != port:
        problems.append(f"no readinessProbe on /health at port {port}: {probe}")
    targets = {ports.get(p["targetPort"], p["targetPort"]) for p in svc["spec"]["ports"]}
    if targets != {port}:
        problems.append(f"the Service targets {targets}, the service listens on {port}")
    return problems


def k8s_reference_problems(manifests: dict[str, list[dict[str, Any]]]) -> Problems:
    """Secrets, keys, the PVC and the head's address that the manifests name exist; the secret
    template holds placeholders only; every pod mounts the PVC where the service's
    storage_path and BITSWEEP_HOME lie; every pod runs as the image's user."""
    docs = [d for ds in manifests.values() for d in ds]
    problems = []
    secrets = {
        d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"
    }
    for name, data in secrets.items():
        for key, value in data.items():
            if SECRET_NAME.search(key.upper()) and PLACEHOLDER not in value:
                problems.append(f"Secret {name}/{key} holds a value, not {PLACEHOLDER}")
    for s in strings(docs):
        for m in URL_PASSWORD.finditer(s):
            if PLACEHOLDER not in m["password"]:
                problems.append(f"a manifest holds a password: {s}")
    refs = [v for d in docs for v in _walk(d, "secretKeyRef")]
    refs += [{"name": o["secretName"], "key": "auth_token"} for o in _walk(docs, "authOptions")]
    for ref in refs:
        if ref["key"] not in secrets.get(ref["name"], {}):
            problems.append(f"secret {ref['name']}/{ref['key']} is not in the template")
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for name, pvc in pvcs.items():
        if "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
            problems.append(f"PVC {name} is not ReadWriteMany")
    dep = one(manifests, "Deployment")
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    cluster = one(manifests, "RayCluster")["metadata"]["name"]
    if env.get("BITSWEEP_RAY_ADDRESS") != f"http://{cluster}-head-svc:8265":
        problems.append(f"BITSWEEP_RAY_ADDRESS={env.get('BITSWEEP_RAY_ADDRESS')}, not {cluster}'s")
    found = re.search(r"useradd --uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    uid = int(found[1]) if found else None
    for doc in docs:
        for group, template in pod_templates(doc):
            spec = template.get("spec", {})
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in spec.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            for claim in claims.values():
                if claim not in pvcs:
                    problems.append(f"{doc['kind']} {group} mounts PVC {claim}, not defined")
            where = {
                m["mountPath"]: claims.get(m["name"])
                for m in (spec.get("containers") or [{}])[0].get("volumeMounts", [])
                if not m.get("subPath")
            }
            for key in ("BITSWEEP_STORAGE_PATH", "BITSWEEP_HOME"):
                if not any(under(env.get(key) or "", p) and c for p, c in where.items()):
                    problems.append(f"{doc['kind']} {group} does not mount {key}={env.get(key)}")
            ctx = spec.get("securityContext", {})
            if not ctx.get("runAsNonRoot") or ctx.get("runAsUser") != uid:
                problems.append(f"{doc['kind']} {group} does not run as the image's user")
    return problems


def _walk(obj: Any, key: str) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def doc_manifest_problems(
    manifests: dict[str, list[dict[str, Any]]], rows: list[list[str]]
) -> Problems:
    described = {Path(ticked(r[0])[0]).name: set(ticked(r[1])) for r in rows}
    actual = {name: {d["kind"] for d in docs} for name, docs in manifests.items()}
    return [
        f"{name}: docs/deploy.md lists kinds {described.get(name)}, the file has {kinds}"
        for name, kinds in actual.items()
        if described.get(name) != kinds
    ] + [
        f"docs/deploy.md lists {n}, not in deploy/k8s" for n in sorted(set(described) - set(actual))
    ]


def autoscaler_node_types(cluster: dict[str, Any]) -> dict[str, Any]:
    """The node types Ray's KubeRay autoscaler derives from the RayCluster."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = copy.deepcopy(cluster)
    cr["metadata"].setdefault("namespace", "default")
    return _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return load_manifests()


def test_compose_names_every_service_the_doc_describes(compose: dict[str, Any]) -> None:
    assert doc_service_problems(compose, doc_table("service")) == []


def test_every_compose_service_has_a_health_check_and_waits_for_health(compose) -> None:
    assert healthcheck_problems(compose) == []
    assert depends_problems(compose) == []


def test_compose_holds_no_secret(compose: dict[str, Any]) -> None:
    assert secret_problems(compose) == []


def test_compose_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    assert volume_problems(compose) == []


def test_gpu_worker_reserves_gpus_and_joins_the_head(compose: dict[str, Any]) -> None:
    assert gpu_problems(compose) == []


def test_service_and_ray_nodes_share_auth_and_storage(compose: dict[str, Any]) -> None:
    assert ray_problems(compose) == []


def test_env_example_holds_every_variable_compose_reads(compose: dict[str, Any]) -> None:
    assert env_example_problems(compose, load_env_example()) == []


def test_dockerfile_installs_as_the_readme_does() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    ignore = "\n".join(ln for ln in ignore.splitlines() if not ln.startswith("#"))
    assert dockerfile_problems(text, readme_torch(), ignore) == []


def test_cpu_and_cuda_images_share_a_python(compose: dict[str, Any]) -> None:
    assert python_match_problems((DEPLOY / "Dockerfile").read_text(), compose) == []


def test_doc_lists_every_manifest_with_its_kinds(manifests) -> None:
    assert doc_manifest_problems(manifests, doc_table("manifest")) == []


def test_raycluster_has_the_fields_kuberay_requires(manifests) -> None:
    assert raycluster_problems(one(manifests, "RayCluster")) == []


def test_rayjob_runs_the_sweep_spec_of_its_configmap(manifests) -> None:
    configmaps = [d for ds in manifests.values() for d in ds if d["kind"] == "ConfigMap"]
    assert rayjob_problems(one(manifests, "RayJob"), configmaps) == []


def test_deployment_serves_with_a_readiness_probe(manifests) -> None:
    assert deployment_problems(one(manifests, "Deployment"), one(manifests, "Service")) == []


def test_manifests_reference_what_exists_and_hold_no_secret(manifests) -> None:
    assert k8s_reference_problems(manifests) == []


def test_rays_autoscaler_reads_the_gpu_group(manifests) -> None:
    cluster = one(manifests, "RayCluster")
    types = autoscaler_node_types(cluster)
    group = cluster["spec"]["workerGroupSpecs"][0]
    gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"][GPU])
    assert types[group["groupName"]]["resources"]["GPU"] == gpus
    assert types[group["groupName"]]["min_workers"] == group["minReplicas"]
    assert types[group["groupName"]]["max_workers"] == group["maxReplicas"]
    assert types["headgroup"]["resources"]["CPU"] == 0  # the head runs no trials


def test_the_doc_names_only_files_that_exist() -> None:
    named = set(re.findall(r"\bdeploy/[\w./-]*[\w]", DOC.read_text()))
    missing = [p for p in sorted(named) if not (ROOT / p).exists() and p != "deploy/.env"]
    assert missing == []


# -- each check finds what it is for -----------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """A mutation: set the value at a dotted path (list indices as numbers); None deletes."""

    def apply(obj: Any) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        key: Any = int(last) if isinstance(obj, list) else last
        if value is None:
            del obj[key]
        else:
            obj[key] = value

    return apply


def _env(name: str, value: str) -> Callable[[Any], None]:
    """A mutation of the Deployment: set its container's environment variable `name`."""

    def apply(dep: Any) -> None:
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        (entry,) = [e for e in env if e["name"] == name]
        entry["value"] = value

    return apply


COMPOSE_BREAKS: list[tuple[str, Callable[[dict], Problems], Callable[[Any], None]]] = [
    ("no health check", healthcheck_problems, _set("services.mlflow.healthcheck", None)),
    (
        "waits only for a start",
        depends_problems,
        _set("services.bitsweep.depends_on.mlflow.condition", "service_started"),
    ),
    (
        "a written password",
        secret_problems,
        _set("services.postgres.environment.POSTGRES_PASSWORD", "hunter2hunter2"),
    ),
    (
        "a password with a default",
        secret_problems,
        _set("services.ray-head.environment.PGPASSWORD", "${OPTUNA_DB_PASSWORD:-changeme}"),
    ),
    (
        "a password in a URL",
        secret_problems,
        _set(
            "services.bitsweep.environment.BITSWEEP_OPTUNA_STORAGE",
            "postgresql+psycopg://optuna:s3cret@postgres:5432/optuna",
        ),
    ),
    ("an undeclared volume", volume_problems, _set("volumes.shared", None)),
    ("an unused volume", volume_problems, _set("volumes.spare", {})),
    (
        "no GPU reservation",
        gpu_problems,
        _set("services.ray-gpu-worker.deploy", None),
    ),
    (
        "storage off the shared volume",
        ray_problems,
        _set("services.bitsweep.environment.BITSWEEP_STORAGE_PATH", "/tmp/ray"),
    ),
    ("no Ray token", ray_problems, _set("services.ray-gpu-worker.environment", {})),
    (
        "a service not in the doc",
        lambda c: doc_service_problems(c, doc_table("service")),
        _set("services.redis", {"image": "redis"}),
    ),
    (
        "a variable missing from env.example",
        lambda c: env_example_problems(c, load_env_example()),
        _set("services.mlflow.command.2", "--artifacts-destination=${ARTIFACTS:-/mlartifacts}"),
    ),
]


@pytest.mark.parametrize(
    ("what", "check", "brk"), COMPOSE_BREAKS, ids=[b[0] for b in COMPOSE_BREAKS]
)
def test_compose_checks_find_their_break(what: str, check, brk) -> None:
    broken = copy.deepcopy(load_compose())
    brk(broken)
    assert check(broken), what


def test_env_example_check_finds_a_secret_value_and_a_stale_default(compose) -> None:
    env = load_env_example()
    assert env_example_problems(compose, {**env, "RAY_AUTH_TOKEN": "0123456789abcdef"})
    assert env_example_problems(compose, {**env, "PUBLISH_ADDRESS": "0.0.0.0"})
    assert env_example_problems(compose, {**env, "UNUSED": "x"})


def test_dockerfile_check_finds_each_break() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    ignore = "*\n!pyproject.toml\n!README.md\n!schemas/\n!strategies/\n!runners/\n!service/"
    torch = readme_torch()
    assert dockerfile_problems(text, torch, ignore) == []
    for broken_text, broken_torch, broken_ignore in [
        (text.replace("TORCH_VERSION=2.13.0", "TORCH_VERSION=2.12.0"), torch, ignore),
        (text, torch | {"2.12.0"}, ignore),
        (text.replace("USER bitsweep", "USER root"), torch, ignore),
        (text.replace("    pip install .", "    pip install -e ."), torch, ignore),
        (text.replace("COPY runners runners", ""), torch, ignore),
        (text, torch, ignore.replace("!service/", "")),
        (
            text.replace("download.pytorch.org/whl/cpu", "download.pytorch.org/whl/cu128"),
            torch,
            ignore,
        ),
    ]:
        assert dockerfile_problems(broken_text, broken_torch, broken_ignore)
    cuda = load_compose()
    cuda["services"]["ray-gpu-worker"]["build"]["args"]["BASE_IMAGE"] = (
        "nvidia/cuda:12.8.0-runtime-ubuntu22.04"
    )
    assert python_match_problems(text, cuda)


K8S_BREAKS: list[tuple[str, str, Callable[[Any], None]]] = [
    ("RayCluster", "no rayStartParams", _set("spec.headGroupSpec.rayStartParams", None)),
    ("RayCluster", "no containers", _set("spec.headGroupSpec.template.spec.containers", [])),
    ("RayCluster", "no groupName", _set("spec.workerGroupSpecs.0.groupName", None)),
    ("RayCluster", "min above max", _set("spec.workerGroupSpecs.0.minReplicas", 9)),
    ("RayCluster", "no maxReplicas", _set("spec.workerGroupSpecs.0.maxReplicas", None)),
    ("RayCluster", "GPU group to zero", _set("spec.workerGroupSpecs.0.minReplicas", 0)),
    (
        "RayCluster",
        "no GPU limit",
        lambda rc: [
            c["resources"]["limits"].pop(GPU)
            for c in rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
        ],
    ),
    ("RayCluster", "no autoscaling", _set("spec.enableInTreeAutoscaling", False)),
    (
        "RayCluster",
        "no nodeSelector",
        _set("spec.workerGroupSpecs.0.template.spec.nodeSelector", None),
    ),
    ("RayCluster", "old Ray", _set("spec.rayVersion", "2.46.0")),
    ("RayCluster", "wrong apiVersion", _set("apiVersion", "ray.io/v1alpha1")),
    ("RayCluster", "too long a name", _set("metadata.name", "b" * 54)),
    ("RayJob", "no entrypoint", _set("spec.entrypoint", None)),
    ("RayJob", "another command", _set("spec.entrypoint", "python sweep.py")),
    (
        "RayJob",
        "a spec not mounted",
        _set("spec.entrypoint", "bitsweep sweep /elsewhere/spec.yaml"),
    ),
    ("RayJob", "both cluster kinds", _set("spec.clusterSelector", {"ray.io/cluster": "x"})),
    ("RayJob", "a broken cluster", _set("spec.rayClusterSpec.workerGroupSpecs", [])),
    ("Deployment", "another command", _set("spec.template.spec.containers.0.command", ["sleep"])),
    (
        "Deployment",
        "no readiness probe",
        _set("spec.template.spec.containers.0.readinessProbe", None),
    ),
    (
        "Deployment",
        "probe elsewhere",
        _set("spec.template.spec.containers.0.readinessProbe.httpGet.path", "/"),
    ),
    ("Deployment", "two replicas", _set("spec.replicas", 2)),
    ("Service", "a selector of nothing", _set("spec.selector", {"app": "other"})),
    ("Secret/bitsweep-ray-auth", "a real token", _set("stringData.auth_token", "0123456789abcdef")),
    ("Secret/bitsweep-stores", "a missing key", _set("stringData.optuna-password", None)),
    (
        "Secret/bitsweep-stores",
        "a password in a URL",
        _set("stringData.database-url", "postgresql+psycopg://bitsweep:s3cret@db:5432/bitsweep"),
    ),
    ("PersistentVolumeClaim", "one node only", _set("spec.accessModes", ["ReadWriteOnce"])),
    ("Deployment", "the wrong head", _env("BITSWEEP_RAY_ADDRESS", "http://ray-head:8265")),
    ("Deployment", "storage off the PVC", _env("BITSWEEP_STORAGE_PATH", "/tmp/ray")),
    ("RayCluster", "root", _set("spec.headGroupSpec.template.spec.securityContext.runAsUser", 0)),
]


def _all_k8s_problems(manifests: dict[str, list[dict[str, Any]]]) -> Problems:
    configmaps = [d for ds in manifests.values() for d in ds if d["kind"] == "ConfigMap"]
    return (
        raycluster_problems(one(manifests, "RayCluster"))
        + rayjob_problems(one(manifests, "RayJob"), configmaps)
        + deployment_problems(one(manifests, "Deployment"), one(manifests, "Service"))
        + k8s_reference_problems(manifests)
        + doc_manifest_problems(manifests, doc_table("manifest"))
    )


@pytest.mark.parametrize(
    ("kind", "what", "brk"), K8S_BREAKS, ids=[f"{k}: {w}" for k, w, _ in K8S_BREAKS]
)
def test_manifest_checks_find_their_break(kind: str, what: str, brk) -> None:
    manifests = load_manifests()
    assert _all_k8s_problems(manifests) == []
    kind, _, name = kind.partition("/")
    (target,) = [
        d
        for ds in manifests.values()
        for d in ds
        if d["kind"] == kind and name in ("", d["metadata"]["name"])
    ]
    brk(target)
    assert _all_k8s_problems(manifests), what


def test_manifest_doc_check_finds_a_missing_kind(manifests) -> None:
    rows = [[r[0], r[1].replace("`Service`", "")] for r in doc_table("manifest")]
    assert doc_manifest_problems(manifests, rows)
