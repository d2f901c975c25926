#!/usr/bin/env python3
"""The kubelet suite: a real kubelet (the conformance kit's, standalone, static pods) drives berth.

    suite.py --kit KIT --socket SOCK --out DIR [--timeout SECONDS]

Runs inside the network namespace of the berth under test (hack/conformance.sh makes one). It starts the kit's
kubelet on SOCK with the static pods of manifests/ (and, later, late/), waits until every pod reaches the
state the kubelet should give it, checks what the node shows from outside (cgroup values, log files, ports,
the kubelet's runtime-operation error counters), then removes the manifests, stops the kubelet and checks that
berth keeps nothing of the pods: no sandbox, container, mount, network namespace, IP lease, cgroup or process.

Each check prints one line, "ok   NAME" or "FAIL NAME: why"; the last line is "N passed, M failed". The exit
status is 0 only when every check passed. Standard library only.
"""

import argparse
import calendar
import glob
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# What grpc-go answers, without sending anything, for a call whose context its caller cancelled.
CLIENT_CANCELLED = "code = Canceled desc = context canceled"
NODE = "kit-node"
API = "https://127.0.0.1:10250"
# The kubelet's own flags for log rotation (KubeletConfiguration containerLogMaxSize/MaxFiles): small enough
# that the logs pod rotates within seconds.
KUBELET_ARGS = "--container-log-max-size=1Mi --container-log-max-files=3"


class Suite:
    def __init__(self, args):
        self.kit = os.path.abspath(args.kit)
        self.sock = os.path.abspath(args.socket)
        self.out = os.path.abspath(args.out)
        self.timeout = args.timeout
        self.results = []
        self.kubelet_dir = os.path.join(self.out, "kubelet")
        self.manifests = os.path.join(self.out, "manifests")
        self.hostpath = os.path.join(self.out, "hostpath")
        self.crictl = subprocess.run([os.path.join(self.kit, "tools.sh"), "crictl"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    # ------------------------------------------------------------------ plumbing
    def check(self, name, ok, why=""):
        self.results.append((name, bool(ok)))
        print(("ok   %s" % name) if ok else ("FAIL %s: %s" % (name, why)), flush=True)
        return ok

    def get(self, path):
        with urllib.request.urlopen(API + path, context=self.tls, timeout=10) as response:
            return response.read().decode()

    def pods(self):
        """The kubelet's pods by manifest name (static pods are '<name>-<node>')."""
        try:
            items = json.loads(self.get("/pods")).get("items") or []
        except Exception:  # the kubelet is starting or stopping
            return {}
        suffix = "-" + NODE
        return {p["metadata"]["name"][: -len(suffix)]: p for p in items if p["metadata"]["name"].endswith(suffix)}

    def crictl_json(self, *args):
        ep = "unix://" + self.sock
        out = subprocess.run([self.crictl, "-r", ep, "-i", ep, "--timeout", "30s", *args, "-o", "json"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError("crictl %s: %s" % (" ".join(args), out.stderr.strip()))
        return json.loads(out.stdout or "{}")

    def kubelet_sh(self, *args, env=None):
        return subprocess.run([os.path.join(self.kit, "kubelet.sh"), *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})

    def wait(self, what, predicate, timeout=None):
        """Poll the kubelet's pods until predicate(pods) returns (True, _); the last (False, why) otherwise."""
        deadline = time.monotonic() + (timeout or self.timeout)
        why = "never evaluated"
        while time.monotonic() < deadline:
            pods = self.pods()
            try:
                done, why = predicate(pods)
            except (KeyError, IndexError, TypeError) as err:
                done, why = False, "not there yet (%s)" % err
            if done:
                return True, why
            time.sleep(1)
        return False, "%s: %s after %d s" % (what, why, timeout or self.timeout)

    # ------------------------------------------------------------------ pod state helpers
    @staticmethod
    def container(pod, name, init=False):
        key = "initContainerStatuses" if init else "containerStatuses"
        for status in pod["status"].get(key) or []:
            if status["name"] == name:
                return status
        raise KeyError("no status for container %s" % name)

    @staticmethod
    def ready(pod):
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])

    @staticmethod
    def describe(pod):
        statuses = (pod["status"].get("initContainerStatuses") or []) + (pod["status"].get("containerStatuses") or [])
        return "phase=%s ready=%s %s" % (
            pod["status"].get("phase"), Suite.ready(pod),
            "; ".join("%s restarts=%s state=%s last=%s" % (s["name"], s.get("restartCount"), json.dumps(s.get("state")),
                                                           json.dumps(s.get("lastState"))) for s in statuses))

    def container_id(self, pod, name):
        return self.container(pod, name)["containerID"].split("://", 1)[1]

    def log_dir(self, pod):
        meta = pod["metadata"]
        return os.path.join(self.kubelet_dir, "pod-logs", "%s_%s_%s" % (meta["namespace"], meta["name"], meta["uid"]))

    # ------------------------------------------------------------------ the expectations, one per manifest
    def expect_running_ready(self, name, restarts=0):
        def predicate(pods):
            pod = pods[name]
            statuses = pod["status"]["containerStatuses"]
            running = all("running" in s["state"] for s in statuses)
            restarted = max(s["restartCount"] for s in statuses)
            if running and self.ready(pod) and restarted <= restarts:
                return True, ""
            return False, self.describe(pod)
        return predicate

    def expect_succeeded(self, name):
        def predicate(pods):
            pod = pods[name]
            if pod["status"].get("phase") == "Succeeded":
                codes = [s["state"]["terminated"]["exitCode"] for s in pod["status"]["containerStatuses"]]
                return all(c == 0 for c in codes), self.describe(pod)
            return False, self.describe(pod)
        return predicate

    def expect_crash_loop(self, pods):
        """Restarted with back-off. kubelet 1.36 requeues a crashing pod when its back-off expires, so the
        waiting/CrashLoopBackOff state lasts only from that sync to the restart; the back-off shows for sure
        in the time between the last two runs' starts (a run lasts ~4 s, the second back-off is 10 s)."""
        status = self.container(pods["crash-always"], "crash")
        last = status.get("lastState", {}).get("terminated") or {}
        state = status.get("state", {})
        waiting = state.get("waiting") or {}
        now = state.get("running") or state.get("terminated") or {}
        gap = (self.seconds(now["startedAt"]) - self.seconds(last["startedAt"])
               if now.get("startedAt") and last.get("startedAt") else 0)
        backed_off = waiting.get("reason") == "CrashLoopBackOff" or gap >= 10
        done = status["restartCount"] >= 2 and last.get("exitCode") == 3 and last.get("reason") == "Error" and backed_off
        return done, "%s (%d s between the last two starts)" % (self.describe(pods["crash-always"]), gap)

    @staticmethod
    def seconds(stamp):
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))

    def expect_onfailure(self, pods):
        pod = pods["crash-onfailure"]
        status = self.container(pod, "once")
        last = status.get("lastState", {}).get("terminated") or {}
        now = status.get("state", {}).get("terminated") or {}
        done = (pod["status"].get("phase") == "Succeeded" and status["restartCount"] == 1
                and last.get("exitCode") == 7 and now.get("exitCode") == 0 and now.get("reason") == "Completed")
        return done, self.describe(pod)

    def expect_oom(self, pods):
        pod = pods["oom"]
        now = self.container(pod, "hog").get("state", {}).get("terminated") or {}
        done = pod["status"].get("phase") == "Failed" and now.get("reason") == "OOMKilled" and now.get("exitCode") == 137
        return done, self.describe(pod)

    def expect_init(self, pods):
        pod = pods["init"]
        inits = [self.container(pod, n, init=True)["state"].get("terminated") or {} for n in ("first", "second")]
        done = all(t.get("exitCode") == 0 and t.get("reason") == "Completed" for t in inits)
        main_ok, _ = self.expect_running_ready("init")(pods)
        return done and main_ok, self.describe(pod)

    # ------------------------------------------------------------------ checks from outside the pods
    def check_cgroups(self, pods):
        cid = self.container_id(pods["resources"], "limited")
        uid = pods["resources"]["metadata"]["uid"]
        want = {("cpu", "cpu.shares"): "256", ("cpu", "cpu.cfs_quota_us"): "50000",
                ("cpu", "cpu.cfs_period_us"): "100000", ("memory", "memory.limit_in_bytes"): str(64 << 20)}
        unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        if unified:
            want = {("", "cpu.weight"): "10", ("", "cpu.max"): "50000 100000", ("", "memory.max"): str(64 << 20)}
        problems = []
        for (controller, name), value in want.items():
            base = os.path.join("/sys/fs/cgroup", controller)
            found = [d for d in glob.glob(os.path.join(base, "kubepods", "**", "*" + cid + "*"), recursive=True)
                     if os.path.isdir(d)]
            if not found:
                problems.append("no %s cgroup of container %s below %s/kubepods" % (controller or "unified", cid, base))
                continue
            if "pod" + uid not in found[0]:
                problems.append("%s is not below the pod's cgroup pod%s" % (found[0], uid))
            with open(os.path.join(found[0], name)) as f:
                got = f.read().strip()
            if got != value:
                problems.append("%s/%s = %s, want %s" % (found[0], name, got, value))
        self.check("resources: the container's cgroup has the requests and limits kubelet asked for",
                   not problems, "; ".join(problems))

    def check_logs(self, pods):
        pod = pods["logs"]
        directory = os.path.join(self.log_dir(pod), "writer")
        line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) [PF] ")
        deadline = time.monotonic() + 60
        rotated, current, why = [], [], "no log directory %s" % directory
        while time.monotonic() < deadline:
            names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
            rotated = [n for n in names if n.startswith("0.log.")]
            if rotated and "0.log" in names:
                with open(os.path.join(directory, "0.log"), errors="replace") as f:
                    current = f.read().splitlines()[:200]
                if current:
                    break
            why = "files: %s" % names
            time.sleep(1)
        self.check("logs: kubelet rotated the container log and berth reopened it", rotated and current, why)
        if not current and os.path.exists(os.path.join(directory, "0.log")):
            with open(os.path.join(directory, "0.log"), errors="replace") as f:
                current = f.read().splitlines()[:200]
        bad = [x for x in current if not line.match(x)]
        streams = {x.split(" ")[1] for x in current if line.match(x)}
        self.check("logs: every line of 0.log is in the CRI format, from both streams",
                   current and not bad and streams == {"stdout", "stderr"},
                   "bad lines: %r; streams: %s" % (bad[:3], sorted(streams)))
        # What `kubectl logs` reads: the kubelet's containerLogs endpoint, which parses the CRI log files.
        try:
            served = self.get("/containerLogs/%s/%s/writer?tailLines=20&timestamps=true"
                              % (pod["metadata"]["namespace"], pod["metadata"]["name"])).splitlines()
        except Exception as err:
            served = ["error: %s" % err]
        self.check("logs: the kubelet serves the container's log (kubectl logs)",
                   served and all("berth-log-line" in x or "stderr tick" in x for x in served),
                   "containerLogs answered %r" % served[:3])
        if current:
            newest = os.path.getmtime(os.path.join(directory, "0.log"))
            self.check("logs: 0.log is still written after the rotation", time.time() - newest < 10,
                       "last written %.0f s ago" % (time.time() - newest))

    def check_http(self, name, url, want):
        body, why = "", ""
        for _ in range(20):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read().decode(errors="replace")
                if want in body:
                    break
            except Exception as err:  # refused while the rule or server comes up
                why = str(err)
            time.sleep(1)
        self.check(name, want in body, "GET %s: %s" % (url, why or body[:200]))

    def check_previous_logs(self, pods):
        """`kubectl logs --previous` of the crashing container: the output of its last terminated run. Asked
        while the container runs: then lastState names the newest dead container, the one kubelet keeps
        (while it is terminated, lastState names an older one that kubelet's own pruning has removed)."""
        def running_again(pods):
            status = self.container(pods["crash-always"], "crash")
            return "running" in status["state"] and status["restartCount"] >= 1, self.describe(pods["crash-always"])
        ok, why = self.wait("crash-always running again", running_again)
        name = "restartPolicy Always: the kubelet serves the previous run's log (kubectl logs --previous)"
        if not ok:
            self.check(name, False, why)
            return
        pod = pods["crash-always"]
        text = self.get("/containerLogs/%s/%s/crash?previous=true" % (pod["metadata"]["namespace"],
                                                                      pod["metadata"]["name"]))
        self.check(name, text.strip() == "crashing", "containerLogs?previous=true answered %r" % text[:200])

    def check_volumes(self, pods):
        path = os.path.join(self.hostpath, "output")
        content = open(path).read().strip() if os.path.exists(path) else None
        self.check("volumes: the container wrote into the hostPath directory", content == "from-the-container",
                   "%s holds %r" % (path, content))

    def check_runtime_errors(self):
        try:
            metrics = self.get("/metrics")
        except Exception as err:
            self.check("kubelet: no runtime operation failed", False, "no /metrics: %s" % err)
            return
        errors = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^kubelet_runtime_operations_errors_total\{operation_type="([^"]+)"\} (\S+)$', metrics, re.M)}
        failed = {k: v for k, v in errors.items() if v > 0}
        logged = self.logged_runtime_errors()
        # Two kinds of counted errors are the kubelet's own, not berth's failures, and only when its log
        # accounts for every counted error of the operation:
        # - a call the kubelet gave up on itself: its own context was cancelled (a pod worker's, when the pod
        #   is deleted mid-sync), and grpc-go answers "context canceled" locally without the runtime ever
        #   failing;
        # - ContainerStatus answered NotFound for a container the kubelet had already removed itself. Its
        #   container deletor and its garbage collector both remove dead containers, and the second to come
        #   asks for the status first (to find the log to delete), so it meets the first one's removal.
        own = {}
        for op, n in failed.items():
            reasons = [self.kubelets_own(op, error) for error in logged.get(op, [])]
            if reasons and all(reasons) and len(reasons) >= n:
                own[op] = reasons
        for op, reasons in sorted(own.items()):
            print("note: %d %s error(s) counted, %d logged, all the kubelet's own: %s"
                  % (failed[op], op, len(reasons), "; ".join(sorted(set(reasons)))), flush=True)
        real = {k: v for k, v in failed.items() if k not in own}
        why = "errors by operation: %s" % real
        for op in sorted(real):
            why += "\n  %s: %s" % (op, "; ".join(e["err"] for e in logged.get(op, [])[:5])
                                   or "(no error line in the kubelet log)")
        self.check("kubelet: no runtime operation failed (kubelet_runtime_operations_errors_total)", not real, why)

    @staticmethod
    def kubelets_own(op, error):
        """Why a logged error of a CRI call is the kubelet's own doing, or None when it may be berth's."""
        if CLIENT_CANCELLED in error["err"]:
            return "cancelled by the kubelet itself"
        if op == "container_status" and "code = NotFound" in error["err"] and error["removed"]:
            return "status of a container the kubelet had removed itself"
        return None

    def logged_runtime_errors(self):
        """The errors the kubelet logged for its CRI calls, by operation type as the metrics name them
        ("Version from runtime service failed" err="..." is operation "version", "PodSandboxStatus ..."
        is "podsandbox_status"). Each is {"err": the error, "removed": whether the kubelet had logged removing
        the container the call named (its "RemoveContainer" line) before it}."""
        path = os.path.join(self.kubelet_dir, "kubelet.log")
        logged = {}
        try:
            lines = open(path, errors="replace").read().splitlines()
        except OSError:
            return logged
        removed = set()
        for line in lines:
            m = re.search(r'"RemoveContainer" containerID="([0-9a-f]+)"', line)
            if m:
                removed.add(m.group(1))
            m = re.search(r'"(\w+)\b[^"]* from (?:runtime|image) service failed" err="((?:[^"\\]|\\.)*)"', line)
            if m:
                op = re.sub(r"(?<!^)(?=[A-Z])", "_", m.group(1)).lower().replace("pod_sandbox", "podsandbox")
                container = re.search(r' containerID="([0-9a-f]+)"', line)
                logged.setdefault(op, []).append({"err": m.group(2),
                                                  "removed": bool(container) and container.group(1) in removed})
        return logged

    def check_deleted_while_starting(self):
        src = os.path.join(HERE, "late", "deleted-while-starting.yaml")
        # kubelet.sh start copied the manifests into the directory the kubelet watches
        dst = os.path.join(self.kubelet_dir, "manifests", "deleted-while-starting.yaml")
        shutil.copy(src, dst)
        sandbox = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sandbox is None:
            for item in self.crictl_json("pods").get("items") or []:
                if item["metadata"]["name"] == "deleted-while-starting-" + NODE:
                    sandbox = item["id"]
            time.sleep(0.2)
        os.remove(dst)
        if not self.check("deleted while starting: the kubelet made the pod's sandbox", sandbox, "no sandbox in 60 s"):
            return
        deadline = time.monotonic() + 120
        left = True
        while time.monotonic() < deadline and left:
            ids = [i["id"] for i in self.crictl_json("pods").get("items") or []]
            left = sandbox in ids or "deleted-while-starting" in self.pods()
            time.sleep(1)
        self.check("deleted while starting: the kubelet removed it and berth forgot it", not left,
                   "sandbox %s still there after 120 s" % sandbox)

    # ------------------------------------------------------------------ what is left after the teardown
    def check_nothing_left(self, stop_report):
        warnings = [x for x in stop_report.splitlines() if "WARNING" in x]
        self.check("teardown: the kubelet removed every pod itself", not warnings, "; ".join(warnings))
        pods = self.crictl_json("pods").get("items") or []
        containers = self.crictl_json("ps", "-a").get("containers") or []
        self.check("teardown: berth has no pod sandbox and no container", not pods and not containers,
                   "%d sandboxes, %d containers" % (len(pods), len(containers)))
        state = self.berth_state_dir()
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo")
                  if state and (line.split()[4].startswith(state + "/") or line.split()[4].startswith(self.out + "/"))]
        self.check("teardown: no mount is left below berth's state or the kubelet's directory", not mounts,
                   " ".join(mounts[:10]))
        leases = [p for p in glob.glob(os.path.join(os.path.dirname(self.sock), "ipam", "**", "*"), recursive=True)
                  if os.path.isfile(p) and re.match(r"^[0-9a-f.:]+$", os.path.basename(p))]
        self.check("teardown: no IP lease is left", not leases, " ".join(leases))
        cgroups = [d for d in glob.glob("/sys/fs/cgroup/**/kubepods/**/pod*", recursive=True) if os.path.isdir(d)]
        self.check("teardown: no pod cgroup is left", not cgroups, " ".join(cgroups[:10]))
        links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
        self.check("teardown: no veth is left", not links.strip(), links.strip()[:300])
        procs = subprocess.run(["pgrep", "-a", "-f", "berth-shim"], capture_output=True, text=True).stdout.strip()
        self.check("teardown: no shim is left", not procs, procs[:300])

    def berth_state_dir(self):
        config = os.path.join(os.path.dirname(self.sock), "config.toml")
        if os.path.exists(config):
            m = re.search(r'^state\s*=\s*"([^"]+)"', open(config).read(), re.M)
            if m:
                return m.group(1)
        return None

    # ------------------------------------------------------------------ the run
    def run(self):
        os.makedirs(self.out, exist_ok=True)
        shutil.rmtree(self.manifests, ignore_errors=True)
        os.makedirs(self.manifests)
        os.makedirs(self.hostpath, exist_ok=True)
        with open(os.path.join(self.hostpath, "input"), "w") as f:
            f.write("from-the-host\n")
        for path in sorted(glob.glob(os.path.join(HERE, "manifests", "*.yaml"))):
            text = open(path).read().replace("@HOSTPATH@", self.hostpath)
            with open(os.path.join(self.manifests, os.path.basename(path)), "w") as f:
                f.write(text)

        started = self.kubelet_sh("start", self.sock, self.manifests, self.kubelet_dir, env={"KUBELET_ARGS": KUBELET_ARGS})
        if not self.check("kubelet: started on berth's socket", started.returncode == 0,
                          (started.stdout + started.stderr).strip()[-800:]):
            self.kubelet_sh("stop", self.kubelet_dir)
            return self.finish()
        try:
            self.run_checks()
        finally:
            self.print_status()
            self.check_runtime_errors()
            stopped = self.kubelet_sh("stop", self.kubelet_dir)
            self.check_nothing_left(stopped.stdout + stopped.stderr)
        return self.finish()

    def run_checks(self):
        expectations = [
            ("probes: exec startup, httpGet readiness and tcpSocket liveness probes pass",
             self.expect_running_ready("probes")),
            ("init containers: run in order, Completed, then the main container is Ready", self.expect_init),
            ("restartPolicy Always: a crashing container is restarted with back-off (exit 3, CrashLoopBackOff)",
             self.expect_crash_loop),
            ("restartPolicy OnFailure: restarted once after exit 7, then Succeeded", self.expect_onfailure),
            ("OOMKilled: a container over its memory limit is reported OOMKilled, exit 137", self.expect_oom),
            ("logs: the writer runs", self.expect_running_ready("logs")),
            ("volumes: emptyDir (disk and memory), hostPath and downward API checked from inside",
             self.expect_succeeded("volumes")),
            ("resources: the limited container runs", self.expect_running_ready("resources")),
            ("securityContext: runAsUser, readOnlyRootFilesystem, capabilities, privileged checked from inside",
             self.expect_succeeded("security")),
            ("hostNetwork: the pod is Ready", self.expect_running_ready("hostnetwork")),
            ("hostPort: the pod is Ready", self.expect_running_ready("hostport")),
        ]
        for name, predicate in expectations:
            ok, why = self.wait(name, predicate)
            self.check(name, ok, why)
        pods = self.pods()
        for name, fn in [("resources", self.check_cgroups), ("logs", self.check_logs),
                         ("volumes", self.check_volumes), ("crash-always", self.check_previous_logs)]:
            if name in pods:
                try:
                    fn(pods)
                except Exception as err:
                    self.check("%s: checked from outside" % name, False, repr(err))
        self.check_http("hostNetwork: the node reaches the server on 127.0.0.1:12080", "http://127.0.0.1:12080/",
                        "berth conformance kit web")
        gateway = "10.91.0.1"
        self.check_http("hostPort: the node reaches the pod through host port 12081",
                        "http://%s:12081/" % gateway, "berth conformance kit web")
        self.check_deleted_while_starting()
        # The healthy pods must still be healthy: nothing restarted them meanwhile.
        for name in ("probes", "init", "logs", "resources", "hostnetwork", "hostport"):
            ok, why = self.expect_running_ready(name)(self.pods())
            self.check("%s: still Running and Ready, never restarted" % name, ok, why)

    def print_status(self):
        status = self.kubelet_sh("status", self.kubelet_dir)
        print("---- kubelet status\n%s----" % status.stdout, flush=True)

    def finish(self):
        failed = [n for n, ok in self.results if not ok]
        print("%d passed, %d failed" % (len(self.results) - len(failed), len(failed)), flush=True)
        return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kit", required=True, help="the conformance kit's directory")
    parser.add_argument("--socket", required=True, help="berth's CRI socket")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds each pod has to reach its state")
    sys.exit(Suite(parser.parse_args()).run())


if __name__ == "__main__":
    main()
