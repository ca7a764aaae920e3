#!/usr/bin/env python3
"""Consistency checks of docker/compose.yaml that its JSON schema cannot express.

    python3 scripts/ops_compose_check.py

- Secrets: every variable the compose file interpolates is listed in docker/.env.example; the
  ones it requires (`${VAR:?…}`) are listed there with an empty value; no secret-like variable
  has a default (`${VAR:-…}`); no secret-like environment entry of a service is a literal;
  docker/.env is ignored by git.
- References: bind-mount sources and the build context exist; named volumes, secrets and
  depends_on targets are declared.
- Prometheus: its rule files exist beside prometheus.yml; each credentials_file is a secret
  given to the prometheus service; scrape targets are compose services, and dripline targets use
  the port of DRIPLINE__HTTP__LISTEN.
- Grafana: the provisioned dashboard folder and data source URL point at what compose mounts and
  runs.
Exit 1 with the list of problems. Needs PyYAML.
"""

import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
SECRETISH = re.compile(r"SECRET|TOKEN|PASSWORD|_KEYS?$|_KEYS?_")
problems = []


def problem(msg):
    problems.append(msg)


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def main():
    compose_path = os.path.join(DOCKER, "compose.yaml")
    raw = open(compose_path, encoding="utf-8").read()
    text = "\n".join(line for line in raw.splitlines() if not line.lstrip().startswith("#"))
    compose = load(compose_path)
    services = compose.get("services") or {}

    # --- secrets ---------------------------------------------------------------------------
    refs = re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?\-+])([^}]*))?\}", text)
    example = {}
    for line in open(os.path.join(DOCKER, ".env.example"), encoding="utf-8"):
        m = re.match(r"\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.rstrip("\n"))
        if m:
            example.setdefault(m.group(2), (bool(m.group(1)), m.group(3)))
    for name, op, arg in refs:
        if name not in example:
            problem(f"${{{name}}} is used in compose.yaml but not listed in docker/.env.example")
            continue
        commented, value = example[name]
        if op == ":?":
            if commented:
                problem(f"{name} is required by compose.yaml but commented out in docker/.env.example")
            if value.strip():
                problem(f"{name} has a value in docker/.env.example: placeholders must stay empty")
        if op in (":-", "-") and SECRETISH.search(name):
            problem(f"{name} looks like a secret but has a default in compose.yaml: require it with ${{{name}:?…}}")
    for name, (commented, value) in example.items():
        if not commented and value.strip():
            problem(f"docker/.env.example gives {name} a value: ship empty placeholders only")
    for sname, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for k, v in env.items():
            if SECRETISH.search(k) and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", str(v)):
                if not k.endswith("__FILE"):
                    problem(f"service {sname}: {k} is not taken from docker/.env as ${{VAR:?…}}")
    for name, sec in (compose.get("secrets") or {}).items():
        if "environment" in sec and sec["environment"] not in [r[0] for r in refs if r[1] == ":?"]:
            problem(f"secret {name}: its variable {sec['environment']} is not required (${{…:?…}}) anywhere")
    try:
        r = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", "docker/.env"], capture_output=True)
        if r.returncode == 1:
            problem("docker/.env is not ignored by git")
    except FileNotFoundError:
        pass

    # --- references ------------------------------------------------------------------------
    volumes = set(compose.get("volumes") or {})
    secrets = set(compose.get("secrets") or {})
    for sname, svc in services.items():
        b = svc.get("build")
        if b:
            ctx = os.path.normpath(os.path.join(DOCKER, b.get("context", ".") if isinstance(b, dict) else b))
            if not os.path.isdir(ctx):
                problem(f"service {sname}: build context {ctx} does not exist")
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile")) if isinstance(b, dict) else None
            if df and not os.path.isfile(df):
                problem(f"service {sname}: Dockerfile {df} does not exist")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.normpath(os.path.join(DOCKER, src))):
                    problem(f"service {sname}: bind mount source {src} does not exist")
            elif src and src not in volumes:
                problem(f"service {sname}: volume {src} is not declared")
        for s in svc.get("secrets") or []:
            name = s if isinstance(s, str) else s.get("source")
            if name not in secrets:
                problem(f"service {sname}: secret {name} is not declared")
        deps = svc.get("depends_on") or []
        for d in deps if isinstance(deps, list) else deps.keys():
            if d not in services:
                problem(f"service {sname}: depends_on {d}, which is no service")

    def mounts(sname):
        out = {}
        for v in services.get(sname, {}).get("volumes") or []:
            if isinstance(v, str):
                parts = v.split(":")
                out[parts[1]] = parts[0]
        return out

    # --- prometheus ------------------------------------------------------------------------
    prom_dir = os.path.join(DOCKER, "prometheus")
    prom = load(os.path.join(prom_dir, "prometheus.yml"))
    pm = mounts("prometheus")
    if pm.get("/etc/prometheus") != "./prometheus":
        problem("prometheus: docker/prometheus is not mounted at /etc/prometheus")
    for rf in prom.get("rule_files") or []:
        if os.path.isabs(rf) or not os.path.isfile(os.path.join(prom_dir, rf)):
            problem(f"prometheus.yml: rule file {rf} is not a file beside prometheus.yml")
    prom_secrets = {
        (s if isinstance(s, str) else s.get("target") or s.get("source"))
        for s in services.get("prometheus", {}).get("secrets") or []
    }
    listen_port = {}
    for sname, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, dict) and "DRIPLINE__HTTP__LISTEN" in env:
            listen_port[sname] = str(env["DRIPLINE__HTTP__LISTEN"]).rsplit(":", 1)[-1]
    for job in prom.get("scrape_configs") or []:
        auth = job.get("authorization") or {}
        cf = auth.get("credentials_file")
        if cf:
            m = re.fullmatch(r"/run/secrets/(.+)", cf)
            if not m or m.group(1) not in prom_secrets:
                problem(f"prometheus.yml job {job['job_name']}: {cf} is not a secret of the prometheus service")
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                host, _, port = t.rpartition(":")
                if host == "localhost":
                    continue
                if host not in services:
                    problem(f"prometheus.yml job {job['job_name']}: target {t} is no compose service")
                elif host in listen_port and port != listen_port[host]:
                    problem(f"prometheus.yml: {t} is not the port of {host}'s DRIPLINE__HTTP__LISTEN ({listen_port[host]})")
    if sorted(listen_port) != sorted(
        t.rpartition(":")[0]
        for job in prom.get("scrape_configs") or []
        if job.get("job_name") == "dripline"
        for sc in job.get("static_configs") or []
        for t in sc.get("targets") or []
    ):
        problem(f"prometheus.yml job dripline does not scrape exactly the dripline services {sorted(listen_port)}")

    # --- grafana ---------------------------------------------------------------------------
    gm = mounts("grafana")
    prov = os.path.join(DOCKER, "grafana", "provisioning")
    for f in sorted(os.listdir(os.path.join(prov, "dashboards"))):
        for p in load(os.path.join(prov, "dashboards", f)).get("providers") or []:
            path = (p.get("options") or {}).get("path")
            src = gm.get(path)
            folder = os.path.join(DOCKER, src or "-")
            if not src or not os.path.isdir(folder) or not any(x.endswith(".json") for x in os.listdir(folder)):
                problem(f"grafana provider {p.get('name')}: {path} is not a mounted folder of dashboards")
    for f in sorted(os.listdir(os.path.join(prov, "datasources"))):
        for d in load(os.path.join(prov, "datasources", f)).get("datasources") or []:
            host = re.sub(r"^\w+://", "", d.get("url", "")).split(":")[0].split("/")[0]
            if host not in services:
                problem(f"grafana data source {d.get('name')}: {d.get('url')} is no compose service")
    home = (services.get("grafana", {}).get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        folder, _, name = home.rpartition("/")
        if folder not in gm or not os.path.isfile(os.path.join(DOCKER, gm[folder], name)):
            problem(f"grafana: home dashboard {home} is not mounted")

    if problems:
        print(f"ops_compose_check: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"ops_compose_check: {len(services)} services; secrets, references, Prometheus and Grafana wiring consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
