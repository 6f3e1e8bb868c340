#!/usr/bin/env python3
"""Cache-hit load test: edgegate vs varnish vs haproxy vs nginx, same run.

Starts, all on loopback:
  - the origin: nginx answering `/obj` with a SIZE-byte body marked
    `Cache-Control: public, max-age=3600`;
  - four caches in front of it, each pinned to the same CPUs (taskset) with
    the same worker count:
      edgegate  (release build) `[routes.cache]`, moka store of 256 MiB;
      varnish   `-s malloc,256m`, one thread pool;
      haproxy   its RAM cache (`cache` section, 256 MB), nbthread N;
      nginx     `proxy_cache` on tmpfs (/dev/shm), worker_processes N;
  - warms each cache and checks that the next answer is a hit;
then, interleaved over several rounds:
  - wrk at full speed (fixed connections, load generator pinned to other
    CPUs): req/s, p50/p99, and each cache's CPU time from /proc → CPU µs per
    request;
  - k6 at one fixed arrival rate for all (k6/cache-hit.js): p50/p99 at equal load.
Checks afterwards that the origin served only the warm-up requests. When the
`bare_pingora` example is built, a Pingora server answering every request
from `request_filter` with the same body (`static:SIZE`) runs too: the floor
any Pingora-based cache hit stands on (reported, not a peer). When the
`tokio_floor` example is built, a bare tokio + httparse responder writing the
same bytes runs too: the floor under edgegate's hit lane, which answers plain
fresh hits before Pingora's session (reported, not a peer).
Prints per-round numbers, medians, and ratios against edgegate.

Usage: python3 loadtest/cache.py [--workers 1] [--duration 10] [--rounds 3]
                                 [--size 1024] [--rate 2000] [--out FILE]
"""
import argparse, json, os, pwd, shutil, signal, statistics, subprocess, tempfile, time, urllib.request

from run import ROOT, free_port, wait_http, cpu_seconds, children, nginx, NGINX_COMMON, parse_wrk, k6_result, stop
from run import edgegate_conf as proxy_edgegate_conf

PEERS = ("edgegate", "varnish", "haproxy", "nginx")


def origin_conf(port, size):
    body = "x" * (size - 1)
    return NGINX_COMMON.replace("events", "worker_processes 1;\nevents") + f"""
http {{
  access_log @DIR@/logs/access.log;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location /obj {{
      default_type text/plain;
      add_header Cache-Control "public, max-age=3600";
      return 200 "{body}\\n";
    }}
  }}
}}
"""


def nginx_cache_conf(port, origin_port, workers, cache_dir):
    return NGINX_COMMON.replace("events", f"worker_processes {workers};\nevents") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path {cache_dir} levels=1:2 keys_zone=edge:16m max_size=256m inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status;
    }}
  }}
}}
"""


def haproxy_conf(port, origin_port, workers):
    return f"""
global
  nbthread {workers}
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
cache edge
  total-max-size 256
  max-object-size 1048576
  max-age 3600
frontend fe
  bind 127.0.0.1:{port}
  http-request cache-use edge
  http-response cache-store edge
  http-response set-header X-Cache-Status HIT if !{{ srv_id -m found }}
  default_backend be
backend be
  http-reuse always
  server origin 127.0.0.1:{origin_port}
"""


def edgegate_conf(port, admin, origin_port, workers):
    # run.py's proxy config, its route caching, one 256 MiB store.
    return proxy_edgegate_conf(port, admin, origin_port, workers) + '[routes.cache]\n[cache]\nsize = "256MiB"\n'


def is_hit(name, headers):
    h = {k.lower(): v for k, v in headers.items()}
    if name == "edgegate":
        return "; hit" in h.get("cache-status", "")
    if name == "varnish":
        return len(h.get("x-varnish", "").split()) == 2
    return h.get("x-cache-status", "").upper() == "HIT"


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        r.read()
        return dict(r.headers)


def run_wrk(url, pids, duration, connections, wrk_cpus):
    before = cpu_seconds(pids)
    out = subprocess.run(["taskset", "-c", wrk_cpus, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
                          "--latency", url], capture_output=True, text=True, check=True).stdout
    after = cpu_seconds(pids)
    r = parse_wrk(out)
    r["cpu_us_per_req"] = (after - before) * 1e6 / max(r["requests"], 1)
    return r


def run_k6(url, args, work, name, wrk_cpus):
    summary = os.path.join(work, f"k6-{name}.json")
    env = dict(os.environ, TARGET=url, RATE=str(args.rate), SIZE=str(args.size), DURATION=f"{args.duration}s")
    p = subprocess.run(["taskset", "-c", wrk_cpus, "k6", "run", "--quiet", "--no-color", "--summary-export",
                        summary, os.path.join(ROOT, "loadtest/k6/cache-hit.js")],
                       capture_output=True, text=True, env=env)
    return k6_result(summary, p.returncode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024, help="object body bytes")
    ap.add_argument("--rate", type=int, default=2000, help="k6 arrival rate (req/s) for latency")
    ap.add_argument("--edgegate", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    tools = {"nginx": "nginx", "wrk": "wrk", "k6": "k6", "varnishd": "/usr/sbin/varnishd",
             "haproxy": "/usr/sbin/haproxy"}
    for tool, path in tools.items():
        if not (shutil.which(tool) or os.path.exists(path)):
            raise SystemExit(f"{tool} is missing: run loadtest/setup.sh first")
    varnishd = shutil.which("varnishd") or tools["varnishd"]
    haproxy = shutil.which("haproxy") or tools["haproxy"]
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/edgegate/target"))
    binary = args.edgegate or os.path.join(target_dir, "release/edgegate")
    if not os.path.exists(binary):
        raise SystemExit(f"no release binary at {binary}: cargo build --release -p edgegate")
    ncpu = os.cpu_count() or 2
    # Caches on the first `workers` CPUs, the load generator on the rest.
    server_cpus = ",".join(str(i) for i in range(min(args.workers, ncpu - 1)))
    wrk_cpus = ",".join(str(i) for i in range(min(args.workers, ncpu - 1), ncpu))

    work = tempfile.mkdtemp(prefix="edgegate-cachetest-")
    shm = tempfile.mkdtemp(prefix="edgegate-nginx-cache-", dir="/dev/shm")
    procs = []
    pin = lambda cmd: ["taskset", "-c", server_cpus] + cmd
    try:
        os.chmod(work, 0o755)
        o_port = free_port()
        origin = nginx(origin_conf(o_port, args.size), work, "origin")
        procs.append(origin)
        wait_http(f"http://127.0.0.1:{o_port}/obj")
        ports = {n: free_port() for n in PEERS}
        admin = free_port()

        conf = os.path.join(work, "edgegate.toml")
        with open(conf, "w") as f:
            f.write(edgegate_conf(ports["edgegate"], admin, o_port, args.workers))
        eg = subprocess.Popen(pin([binary, "--config", conf]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(eg)

        vdir = os.path.join(work, "varnish")
        os.makedirs(vdir)
        vcmd = [varnishd, "-F", "-n", vdir, "-a", f"127.0.0.1:{ports['varnish']}", "-b", f"127.0.0.1:{o_port}",
                "-s", "malloc,256m", "-p", "thread_pools=1", "-T", "none"]
        try:
            pwd.getpwnam("varnish")
        except KeyError:
            vcmd += ["-j", "none"]
        vn = subprocess.Popen(pin(vcmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(vn)

        hconf = os.path.join(work, "haproxy.cfg")
        with open(hconf, "w") as f:
            f.write(haproxy_conf(ports["haproxy"], o_port, args.workers))
        hp = subprocess.Popen(pin([haproxy, "-db", "-f", hconf]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(hp)

        ng = nginx(nginx_cache_conf(ports["nginx"], o_port, args.workers, shm), work, "cache")
        procs.append(ng)
        # nginx forks its workers: pin the whole group.
        wait_http(f"http://127.0.0.1:{ports['nginx']}/obj")
        for pid in [ng.pid] + children(ng.pid):
            subprocess.run(["taskset", "-pc", server_cpus, str(pid)], capture_output=True)

        wait_http(f"http://127.0.0.1:{admin}/readyz")
        bare_bin = os.path.join(os.path.dirname(binary), "examples/bare_pingora")
        floor = None
        if os.path.exists(bare_bin):
            ports["floor"] = free_port()
            floor = subprocess.Popen(pin([bare_bin, f"127.0.0.1:{ports['floor']}", f"static:{args.size}"]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(floor)
        tokio_bin = os.path.join(os.path.dirname(binary), "examples/tokio_floor")
        tokio_floor = None
        if os.path.exists(tokio_bin):
            ports["tokio"] = free_port()
            tokio_floor = subprocess.Popen(pin([tokio_bin, f"127.0.0.1:{ports['tokio']}", str(args.size)]),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(tokio_floor)
        names = PEERS + (("floor",) if floor else ()) + (("tokio",) if tokio_floor else ())
        targets = {
            "edgegate": lambda: [eg.pid],
            "varnish": lambda: [vn.pid] + children(vn.pid),
            "haproxy": lambda: [hp.pid],
            "nginx": lambda: [ng.pid] + children(ng.pid),
            "floor": lambda: [floor.pid],
            "tokio": lambda: [tokio_floor.pid],
        }
        url = {n: f"http://127.0.0.1:{p}/obj" for n, p in ports.items()}
        for n in names:
            wait_http(url[n])
            get(url[n])
            time.sleep(0.2)
            h = get(url[n])
            if n not in ("floor", "tokio") and not is_hit(n, h):
                raise SystemExit(f"{n} did not answer from cache after warm-up: {h}")
            subprocess.run(["taskset", "-c", wrk_cpus, "wrk", "-t1", "-c16", "-d2s", url[n]], capture_output=True)
        with open(os.path.join(work, "origin", "logs", "access.log")) as f:
            origin_before = sum(1 for _ in f)

        results = {n: {"wrk": [], "k6": []} for n in names}
        for rnd in range(args.rounds):
            order = list(names) if rnd % 2 == 0 else list(reversed(names))
            for n in order:
                r = run_wrk(url[n], targets[n](), args.duration, args.connections, wrk_cpus)
                results[n]["wrk"].append(r)
                print(f"round {rnd + 1} wrk {n:9s} {r['rps']:9.0f} req/s  {r['cpu_us_per_req']:6.2f} CPU µs/req  "
                      f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  non-2xx {r['non2xx']} {r['socket_errors']}",
                      flush=True)
            for n in order:
                r = run_k6(url[n].rsplit("/", 1)[0], args, work, n, wrk_cpus)
                results[n]["k6"].append(r)
                print(f"round {rnd + 1} k6  {n:9s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                      f"p99 {r['p99_ms']:.3f} ms  failed {r['failed_rate']:.4f}  thresholds "
                      f"{'ok' if r['thresholds_ok'] else 'FAILED'}", flush=True)
        with open(os.path.join(work, "origin", "logs", "access.log")) as f:
            origin_during = sum(1 for _ in f) - origin_before

        med = lambda n, tool, key: statistics.median(r[key] for r in results[n][tool])
        summary = {}
        for tool, keys in (("wrk", ("rps", "cpu_us_per_req", "p50_ms", "p99_ms")), ("k6", ("p50_ms", "p99_ms"))):
            for key in keys:
                summary[f"{tool}.{key}"] = {n: med(n, tool, key) for n in names}
        print()
        print(f"medians over {args.rounds} rounds; {args.workers} worker(s) each on CPU {server_cpus}, "
              f"load on CPU {wrk_cpus}; {args.size}-byte object; {args.duration}s per run; "
              f"k6 at {args.rate} req/s")
        print(f"{'metric':20s}" + "".join(f"{n:>11s}" for n in names) + "   ratios edgegate/peer")
        for k, v in summary.items():
            ratios = "  ".join(f"{n}={v['edgegate'] / v[n]:.3f}" for n in names[1:] if v[n])
            print(f"{k:20s}" + "".join(f"{v[n]:11.3f}" for n in names) + "   " + ratios)
        cpu = summary["wrk.cpu_us_per_req"]
        best = min(PEERS[1:], key=lambda n: cpu[n])
        print(f"hit-path CPU: edgegate {cpu['edgegate']:.2f} µs/req, best peer {best} {cpu[best]:.2f} µs/req, "
              f"ratio {cpu['edgegate'] / cpu[best]:.3f} (target ≤ 1)")
        print(f"origin requests during the measured runs: {origin_during} (0 = every answer was a hit)")
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "rounds": results, "summary": summary,
                           "origin_requests_during": origin_during}, f, indent=2)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
