"""Checks the hostprof Helm chart and its rendered manifests without helm or
a cluster (run by `cargo xtask deploy-check`):

1. values.yaml and every ci/*.yaml override, merged as Helm merges them,
   satisfy values.schema.json, and known-bad overrides are rejected;
2. every rendered manifest is valid against the Kubernetes OpenAPI schemas
   (PyPI kubernetes-validate, strict: unknown fields are errors), and a
   known-broken manifest is rejected, so the validator is really on;
3. the default DaemonSet has what the agent needs and no more;
4. the agent config the ConfigMap of every render carries is accepted by
   the hostprof binary itself (`hostprof agent --config ... --print-config`).

Usage: validate.py --chart DIR --rendered FILE [--rendered FILE ...]
                   [--default FILE] [--hostprof BIN] [--k8s-version X.Y]
"""

import argparse
import copy
import json
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)
    return condition


def merge(dst, src):
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def check_values(chart):
    schema = json.loads((chart / "values.schema.json").read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for name, values in [("values.yaml", defaults)] + [
        (f"ci/{p.name}", merge(copy.deepcopy(defaults), yaml.safe_load(p.read_text())))
        for p in sorted((chart / "ci").glob("*.yaml"))
    ]:
        errors = [e.message for e in validator.iter_errors(values)]
        check(not errors, f"{name} does not satisfy values.schema.json: {errors}")
    for bad in [
        {"profiling": {"frequency": "fast"}},
        {"profiling": {"frequency": 5000}},
        {"profiling": {"maxCpu": "fast"}},
        {"profiling": {"maxCpu": 500}},
        {"profiling": {"maxCpu": "0.0001"}},
        {"profiling": {"maxCpu": "0"}},
        {"profiling": {"maxCpu": "500"}},
        {"profiling": {"maxCpu": "100.5 %"}},
        {"profiling": {"profiles": []}},
        {"profiling": {"profiles": ["heap"]}},
        {"profiling": {"profiles": "cpu"}},
        {"otlp": {"protocol": "smtp"}},
        {"otlp": {"endpoint": "collector:4317"}},
        {"unknownKey": 1},
        {"image": {"pullPolicy": "Sometimes"}},
        {"filters": {"podSelector": "app"}},
        {"profiling": {"unwinder": "dwarf"}},
        {"profiling": {"unwindTableBudget": "64 parsecs"}},
        {"profiling": {"unwindTableBudget": "64M"}},
        {"profiling": {"unwindTableBudget": 1024}},
    ]:
        values = merge(copy.deepcopy(defaults), bad)
        check(not validator.is_valid(values), f"the schema accepts the bad override {bad}")


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def check_manifests(paths, version):
    for path in paths:
        docs = documents(path)
        check(docs, f"{path}: renders nothing")
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                check(False, f"{path}: {doc.get('kind')} {doc['metadata'].get('name')}: {err.message}")
    broken = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "broken"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"spec": {"hostPID": "yes", "containers": [{"image": "x"}]}}},
    }
    try:
        kubernetes_validate.validate(broken, version, strict=True)
        check(False, "kubernetes-validate accepted a broken DaemonSet: the check is not working")
    except kubernetes_validate.ValidationError:
        pass


def check_daemonset(path, hostprof):
    docs = documents(path)
    kinds = sorted(d["kind"] for d in docs)
    check(kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"],
          f"default render has {kinds}")
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostPID") is True, "DaemonSet must use hostPID")
    check(any(t.get("operator") == "Exists" for t in pod.get("tolerations", [])),
          "DaemonSet must tolerate every taint")
    container = pod["containers"][0]
    security = container["securityContext"]
    check(not security.get("privileged"), "privileged by default")
    check(security.get("readOnlyRootFilesystem") is True, "root filesystem must be read-only")
    check(security.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped")
    check({"BPF", "PERFMON", "SYS_PTRACE"} <= set(security["capabilities"]["add"]),
          "missing BPF/PERFMON/SYS_PTRACE")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe")
    check(any(e["name"] == "NODE_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
              for e in container["env"]), "NODE_NAME from the downward API")
    check("limits" in container["resources"] and "requests" in container["resources"],
          "resource requests and limits")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    check(mounts == {"/etc/hostprof", "/tmp", "/sys/fs/bpf"}, f"unexpected mounts {mounts}")
    # The node's bpffs, where the trace-context map is shared: the host's
    # own directory, and nothing else of the host.
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    check(host_paths == {"/sys/fs/bpf"}, f"unexpected host paths {host_paths}")
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    rules = {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]}
    check(rules == {("pods", ("get", "list", "watch")), ("nodes", ("get",))}, f"RBAC {rules}")

    if hostprof:
        effective = agent_config(path, hostprof)
        check("metrics_addr: 0.0.0.0:9464" in effective, f"effective config: {effective}")
        check("profiles:\n- cpu\n" in effective, f"effective config: {effective}")
        check("unwinder: tables\nunwind_table_budget: 64MiB\n" in effective,
              f"effective config: {effective}")


def agent_config(path, hostprof):
    """The effective settings `hostprof agent --print-config` makes of the
    config.yaml in the render at `path`; a failure when it rejects them."""
    config = next(d for d in documents(path) if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(config)
        f.flush()
        run = subprocess.run([hostprof, "agent", "--config", f.name, "--print-config"],
                             capture_output=True, text=True)
    check(run.returncode == 0, f"hostprof rejects the config.yaml of {path}: {run.stderr}")
    return run.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chart", required=True, type=pathlib.Path)
    parser.add_argument("--rendered", action="append", default=[], type=pathlib.Path)
    parser.add_argument("--default", type=pathlib.Path)
    parser.add_argument("--hostprof")
    parser.add_argument("--k8s-version", default="1.33")
    args = parser.parse_args()
    check_values(args.chart)
    check_manifests(args.rendered, args.k8s_version)
    if args.default:
        check_daemonset(args.default, args.hostprof)
    if args.hostprof:
        for path in args.rendered:
            if path != args.default and any(d["kind"] == "ConfigMap" for d in documents(path)):
                agent_config(path, args.hostprof)
    for failure in FAILURES:
        print(f"deploy-check: {failure}", file=sys.stderr)
    if FAILURES:
        return 1
    print(f"deploy-check: values schema, {len(args.rendered)} renders against Kubernetes "
          f"{args.k8s_version} schemas, DaemonSet policy and agent config: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
