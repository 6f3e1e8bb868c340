#!/usr/bin/env python3
"""Two edgegate binaries side by side on the filter routes: did a change move
the CPU cost per request, or did the machine?

Starts one nginx origin and two gateways with `filters.py`'s config (same
routes, same ES256 token and JWKS), each pinned to CPU 0 with one worker,
then runs wrk (pinned to CPU 1) against /plain, /noop and /jwt-rl on each,
alternating which binary goes first every round. Prints medians of CPU µs per
request and the added cost of each filter route over /plain. On this shared
box two identical processes differ by up to ~2 µs/request run to run: trust
differences that hold across rounds and repeated runs.

Usage: python3 loadtest/ab.py OLD_BINARY NEW_BINARY [--rounds 5] [--duration 4]
                              [--cache-plain] [--browser-headers]
                              [--server-old TOML] [--server-new TOML]
  e.g. build the old commit in a git worktree with the same CARGO_TARGET_DIR,
  copy its release/edgegate aside, then build the new one.
  --cache-plain turns caching on for /plain (the origin's answers are not
  cacheable, so every request is a miss: what a caching route costs traffic
  it cannot cache); --server-old/--server-new add lines to each gateway's
  [server] table, so one binary can run against itself with a setting
  changed (e.g. --server-old "hit_lane = false", or --server-old
  "filter_recycling = false" for fresh filter instances against recycled).
  --browser-headers sends every request with the twelve headers a browser
  adds to a page request (filters.BROWSER_HEADERS), on every route.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import filters as F  # noqa: E402
import run as R  # noqa: E402

ROUTES = ("plain", "noop", "jwt-rl")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--cache-plain", action="store_true")
    ap.add_argument("--browser-headers", action="store_true")
    ap.add_argument("--server-old", default="")
    ap.add_argument("--server-new", default="")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="edgegate-ab-")
    procs = []
    try:
        o_port = R.free_port()
        procs.append(R.nginx(R.origin_conf(o_port), work, "origin"))
        R.wait_http(f"http://127.0.0.1:{o_port}/")
        token, jwks = F.es256_token_and_jwks()
        jwks_path = os.path.join(work, "jwks.json")
        with open(jwks_path, "w") as f:
            json.dump(jwks, f)
        gws = {}
        for name, binary, server in (("old", args.old, args.server_old), ("new", args.new, args.server_new)):
            port, admin = R.free_port(), R.free_port()
            conf = os.path.join(work, f"{name}.toml")
            text = F.config(port, admin, o_port, 1, jwks_path)
            for line in server.splitlines():  # an override replaces filters.py's own setting
                key = line.split("=")[0].strip()
                text = "\n".join(l for l in text.split("\n") if not (key and l.startswith(key + " =")))
            text = text.replace("[server]\n", f"[server]\n{server}\n")
            if args.cache_plain:
                plain = 'path_prefix = "/plain"\nupstream = "origin"\n'
                text = text.replace(plain, plain + "[routes.cache]\n")
            with open(conf, "w") as f:
                f.write(text)
            p = subprocess.Popen(["taskset", "-c", "0", binary, "--config", conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            R.wait_http(f"http://127.0.0.1:{admin}/readyz")
            gws[name] = (port, p.pid)
        auth = ["-H", f"Authorization: Bearer {token}"]
        browser = [a for h in F.BROWSER_HEADERS for a in ("-H", h)] if args.browser_headers else []
        extra = lambda r: browser + (auth if r == "jwt-rl" else [])
        for port, _ in gws.values():  # warm-up
            for r in ROUTES:
                subprocess.run(["wrk", "-t1", "-c8", "-d1s", *extra(r), f"http://127.0.0.1:{port}/{r}/x"],
                               capture_output=True)
        res = {(g, r): [] for g in gws for r in ROUTES}
        for rnd in range(args.rounds):
            for r in ROUTES:
                order = list(gws) if rnd % 2 == 0 else list(reversed(list(gws)))
                for g in order:
                    port, pid = gws[g]
                    before = R.cpu_seconds([pid])
                    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{args.duration}s",
                                          "--latency", *extra(r), f"http://127.0.0.1:{port}/{r}/x"],
                                         capture_output=True, text=True, check=True).stdout
                    after = R.cpu_seconds([pid])
                    m = R.parse_wrk(out)
                    if m["non2xx"]:
                        raise SystemExit(f"{g} /{r}: non-2xx answers\n{out}")
                    res[(g, r)].append((after - before) * 1e6 / max(m["requests"], 1))
                    print(f"round {rnd + 1} {g:3s} /{r:6s} {res[(g, r)][-1]:6.2f} CPU µs/req", flush=True)
        med = lambda g, r: statistics.median(res[(g, r)])
        print(f"\nmedians over {args.rounds} rounds, CPU µs per request")
        print(f"{'route':8s} {'old':>8s} {'new':>8s} {'new-old':>8s}")
        for r in ROUTES:
            print(f"/{r:7s} {med('old', r):8.2f} {med('new', r):8.2f} {med('new', r) - med('old', r):+8.2f}")
        for r in ROUTES[1:]:
            a, b = med("old", r) - med("old", "plain"), med("new", r) - med("new", "plain")
            print(f"added by /{r}: old {a:.2f}, new {b:.2f}")
    finally:
        R.stop(procs)


if __name__ == "__main__":
    main()
