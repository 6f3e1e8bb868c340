#!/usr/bin/env python3
"""Load test: edgegate vs nginx as reverse proxies of one small-response origin.

Starts, all on loopback:
  - the origin: nginx answering `/small` with a fixed 32-byte body;
  - edgegate (release build) in front of it, with N worker threads;
  - nginx as a reverse proxy in front of it, with N worker processes,
    upstream keep-alive, and the same forwarding headers edgegate adds;
then measures both in the same run, interleaved, several rounds:
  - wrk (peak throughput, fixed connections), with each proxy's CPU time
    read from /proc, giving CPU microseconds per request;
  - k6 (scripted scenario with thresholds, k6/proxy-small.js).
Prints per-round numbers and the edgegate/nginx ratios (medians). When the
`bare_pingora` example is built (cargo build --release -p edgegate --example
bare_pingora), a bare Pingora proxy with no edgegate logic runs too, as the
floor edgegate stands on (with the upstream connect/read/write timeouts every
edgegate route has: ~0.8 µs/request of Pingora's timer work, session 4).
When the `tokio_floor` example is built, it runs too, twice (reported, not
peers): `tokio`, a bare tokio + httparse proxy forwarding request heads
unchanged over one keep-alive upstream connection per client connection,
the least any tokio-based HTTP/1.1 proxy can cost; and `edge`, the same
doing edgegate's per-request header work with a shared per-thread upstream
pool and timeouts, what a proxy path of edgegate's own would start from.

Usage: python3 loadtest/run.py [--workers 1] [--duration 10] [--rounds 3]
                               [--connections 64] [--out loadtest/out/result.json]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"not answering: {url}")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total / TICK


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def nginx(conf_text, workdir, name):
    d = os.path.join(workdir, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(conf_text.replace("@DIR@", d))
    p = subprocess.Popen(["nginx", "-p", d, "-c", conf, "-g", "daemon off;"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return p


NGINX_COMMON = """
pid @DIR@/nginx.pid;
error_log @DIR@/logs/error.log warn;
events { worker_connections 4096; }
"""


def origin_conf(port):
    return NGINX_COMMON.replace("events", "worker_processes 1;\nevents") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ default_type text/plain; return 200 "hello from origin, 32 bytes ok\\n"; }}
  }}
}}
"""


def proxy_conf(port, origin_port, workers):
    return NGINX_COMMON.replace("events", f"worker_processes {workers};\nevents") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id;
    }}
  }}
}}
"""


def edgegate_conf(port, admin, origin_port, workers):
    return f"""
[pop]
name = "loadtest"
[server]
threads = {workers}
drain_window = "0s"
[log]
access_log = false
level = "warn"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
listen = "127.0.0.1:{port}"
[upstreams.origin]
backends = ["127.0.0.1:{origin_port}"]
[[routes]]
name = "all"
upstream = "origin"
"""


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1))
        lat[pct] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": total, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": sock.group(1) if sock else ""}


def run_wrk(url, pids, duration, connections):
    before = cpu_seconds(pids)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    after = cpu_seconds(pids)
    r = parse_wrk(out)
    r["cpu_s"] = after - before
    r["cpu_us_per_req"] = (after - before) * 1e6 / max(r["requests"], 1)
    return r


def k6_result(summary, returncode):
    """What a k6 `--summary-export` file says: req/s, p50/p99 ms, failures, thresholds."""
    with open(summary) as f:
        m = json.load(f)["metrics"]
    return {"rps": m["http_reqs"]["rate"], "p50_ms": m["http_req_duration"]["med"],
            "p99_ms": m["http_req_duration"]["p(99)"], "failed_rate": m["http_req_failed"]["value"],
            "thresholds_ok": returncode == 0}


def stop(procs):
    """Stops the servers a load test started: nginx gracefully (SIGQUIT), the rest by SIGTERM."""
    for p in procs:
        try:
            p.send_signal(signal.SIGQUIT if "nginx" in p.args else signal.SIGTERM)
        except Exception:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except Exception:
            p.kill()


def run_k6(url, duration, vus, workdir, name):
    summary = os.path.join(workdir, f"k6-{name}.json")
    env = dict(os.environ, TARGET=url, VUS=str(vus), DURATION=f"{duration}s")
    p = subprocess.run(["k6", "run", "--quiet", "--no-color", "--summary-export", summary,
                        os.path.join(ROOT, "loadtest/k6/proxy-small.js")],
                       capture_output=True, text=True, env=env)
    return k6_result(summary, p.returncode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--vus", type=int, default=32)
    ap.add_argument("--edgegate", default=None, help="path to a release edgegate binary")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    for tool in ("nginx", "wrk", "k6"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run loadtest/setup.sh first")
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/edgegate/target"))
    binary = args.edgegate or os.path.join(target_dir, "release/edgegate")
    if not os.path.exists(binary):
        raise SystemExit(f"no release binary at {binary}: cargo build --release -p edgegate")

    work = tempfile.mkdtemp(prefix="edgegate-loadtest-")
    procs = []
    try:
        o_port, e_port, e_admin, n_port = free_port(), free_port(), free_port(), free_port()
        procs.append(nginx(origin_conf(o_port), work, "origin"))
        wait_http(f"http://127.0.0.1:{o_port}/small")
        conf = os.path.join(work, "edgegate.toml")
        with open(conf, "w") as f:
            f.write(edgegate_conf(e_port, e_admin, o_port, args.workers))
        eg = subprocess.Popen([binary, "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(eg)
        ng = nginx(proxy_conf(n_port, o_port, args.workers), work, "proxy")
        procs.append(ng)
        wait_http(f"http://127.0.0.1:{e_admin}/readyz")
        wait_http(f"http://127.0.0.1:{e_port}/small")
        wait_http(f"http://127.0.0.1:{n_port}/small")
        targets = {
            "edgegate": (f"http://127.0.0.1:{e_port}", lambda: [eg.pid]),
            "nginx": (f"http://127.0.0.1:{n_port}", lambda: [ng.pid] + children(ng.pid)),
        }
        bare_bin = os.path.join(os.path.dirname(binary), "examples/bare_pingora")
        if os.path.exists(bare_bin) and args.workers == 1:
            b_port = free_port()
            bp = subprocess.Popen([bare_bin, f"127.0.0.1:{b_port}", f"127.0.0.1:{o_port}", "timeouts"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(bp)
            wait_http(f"http://127.0.0.1:{b_port}/small")
            targets["pingora"] = (f"http://127.0.0.1:{b_port}", lambda: [bp.pid])
        tokio_bin = os.path.join(os.path.dirname(binary), "examples/tokio_floor")
        if os.path.exists(tokio_bin) and args.workers == 1:
            for floor, mode in (("tokio", "proxy"), ("edge", "edge")):
                t_port = free_port()
                tp = subprocess.Popen([tokio_bin, f"127.0.0.1:{t_port}", f"{mode}:127.0.0.1:{o_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(tp)
                wait_http(f"http://127.0.0.1:{t_port}/small")
                targets[floor] = (f"http://127.0.0.1:{t_port}", lambda tp=tp: [tp.pid])
        # Warm-up: connection pools, page cache, CPU frequency.
        for name, (url, _) in targets.items():
            subprocess.run(["wrk", "-t1", "-c16", "-d2s", url + "/small"], capture_output=True)

        results = {name: {"wrk": [], "k6": []} for name in targets}
        for rnd in range(args.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(list(targets)))
            for name in order:
                url, pids = targets[name]
                r = run_wrk(url + "/small", pids(), args.duration, args.connections)
                results[name]["wrk"].append(r)
                print(f"round {rnd + 1} wrk {name:9s} {r['rps']:9.0f} req/s  {r['cpu_us_per_req']:6.1f} CPU µs/req  "
                      f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non2xx']} {r['socket_errors']}",
                      flush=True)
            for name in order:
                url, _ = targets[name]
                r = run_k6(url, args.duration, args.vus, work, name)
                results[name]["k6"].append(r)
                print(f"round {rnd + 1} k6  {name:9s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  failed {r['failed_rate']:.4f}  thresholds "
                      f"{'ok' if r['thresholds_ok'] else 'FAILED'}", flush=True)

        med = lambda name, tool, key: statistics.median(r[key] for r in results[name][tool])
        summary = {}
        for tool, keys in (("wrk", ("rps", "cpu_us_per_req", "p50_ms", "p99_ms")), ("k6", ("rps", "p50_ms", "p99_ms"))):
            for key in keys:
                e, n = med("edgegate", tool, key), med("nginx", tool, key)
                summary[f"{tool}.{key}"] = {"edgegate": e, "nginx": n, "ratio": e / n if n else None}
                for floor in ("pingora", "tokio", "edge"):
                    if floor in results:
                        summary[f"{tool}.{key}"][floor] = med(floor, tool, key)
        print()
        print(f"medians over {args.rounds} rounds, {args.workers} worker(s) each, {args.duration}s per run")
        floors = [f for f in ("pingora", "tokio", "edge") if f in results]
        print(f"{'metric':22s} {'edgegate':>10s} {'nginx':>10s} {'edgegate/nginx':>15s}"
              + "".join(f" {'bare ' + f:>13s} {f + '/nginx':>14s}" for f in floors))
        for k, v in summary.items():
            line = f"{k:22s} {v['edgegate']:10.2f} {v['nginx']:10.2f} {v['ratio']:15.3f}"
            for f in floors:
                line += f" {v[f]:13.2f} {v[f] / v['nginx']:14.3f}"
            print(line)
        ok_k6 = all(r["thresholds_ok"] for r in results["edgegate"]["k6"])
        print(f"k6 thresholds (edgegate): {'passed' if ok_k6 else 'FAILED'}")
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "rounds": results, "summary": summary}, f, indent=2)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
