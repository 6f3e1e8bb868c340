#!/usr/bin/env python3
"""Filter cost benchmark: what each filter adds to a proxied request.

One edgegate (release build, N worker threads) in front of one nginx origin,
with routes that differ only in their filters:
  /plain   no filter                      /noop    the no-op filter
  /hs      jwt-auth HS256                 /es      jwt-auth ES256 (JWKS)
  /rl      rate-limit (limit never hit)   /jwt-rl  jwt-auth ES256 + rate-limit
  /chain   jwt-auth ES256 + rate-limit + headers
For each route, wrk measures req/s and edgegate's CPU µs per request; the
added cost of a filter is its route's CPU/request minus /plain's, in the
same run (rounds interleaved, medians). Then k6 runs the scripted scenario
(k6/filters.js) on /plain, /jwt-rl and /chain. Prints the table and the
targets: no-op ≤ 10 µs added; /jwt-rl (jwt ES256 + rate-limit, the route the
issue names) ≥ 0.75× /plain req/s.

Usage: python3 loadtest/filters.py [--workers 1] [--duration 5] [--rounds 3]
Needs: nginx, wrk, k6 (loadtest/setup.sh) and `pip install cryptography`.
"""
import argparse, base64, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import free_port, wait_http, nginx, origin_conf, run_wrk, run_k6, stop, ROOT  # noqa: E402

import hmac, hashlib  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402

SECRET = b"edgegate-bench-secret-0123456789"



# What Chrome sends with a page request besides host, cookie and user-agent
# (gateway/examples/filter_bench.rs has the same list): `ab.py
# --browser-headers` sends them, since every filter is handed the whole head.
BROWSER_HEADERS = [
    'sec-ch-ua: "Chromium";v="130", "Google Chrome";v="130", "Not?A_Brand";v="99"',
    "sec-ch-ua-mobile: ?0",
    'sec-ch-ua-platform: "Linux"',
    "upgrade-insecure-requests: 1",
    "accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "sec-fetch-site: same-origin",
    "sec-fetch-mode: navigate",
    "sec-fetch-user: ?1",
    "sec-fetch-dest: document",
    "referer: https://bench.test/",
    "accept-encoding: gzip, deflate, br, zstd",
    "accept-language: en-GB,en;q=0.9",
]

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def claims():
    return {"sub": "bench-user", "iss": "bench", "aud": "bench", "exp": int(time.time()) + 3600}


def hs256_token():
    head = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def es256_token_and_jwks():
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "e1",
                      "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}]}
    head = b64(json.dumps({"alg": "ES256", "kid": "e1"}).encode())
    body = b64(json.dumps(claims()).encode())
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}", jwks


def config(port, admin, origin, workers, jwks_path, recycling=True):
    jwt = lambda ks, alg: (f'[[routes.filters]]\nmodule = "jwt-auth"\nkey_sets = ["{ks}"]\n'
                           f'config = {{ key_set = "{ks}", algorithms = ["{alg}"], issuer = "bench", audience = "bench", forward_claims = {{ sub = "x-user-id" }} }}\n')
    rl = ('[[routes.filters]]\nmodule = "rate-limit"\nrate_limits = ["huge"]\n'
          'config = { bucket = "huge", key = "principal" }\n')
    hdr = ('[[routes.filters]]\nmodule = "headers"\n'
           'config.request.set = { "x-edge-pop" = "{pop}" }\n')
    route = lambda name, filters: f'[[routes]]\nname = "{name}"\npath_prefix = "/{name}"\nupstream = "origin"\n{filters}\n'
    return f"""
[pop]
name = "bench"
[server]
threads = {workers}
drain_window = "0s"
# Filter routes run on Pingora's path; /plain must too, so that "added" is
# what the filters cost, not the relay's saving (server.relay, RESULTS.md).
relay = false
# Filter instances recycled after a verified reset (the default), or fresh
# for every call (--fresh).
filter_recycling = {"true" if recycling else "false"}
[log]
access_log = false
level = "warn"
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
listen = "127.0.0.1:{port}"
[upstreams.origin]
backends = ["127.0.0.1:{origin}"]
[key_sets.hs]
hmac_secrets = {{ k1 = "{SECRET.decode()}" }}
[key_sets.es]
jwks_file = "{jwks_path}"
[rate_limits.huge]
rate = 100000000
burst = 100000000
{route("plain", "")}
{route("noop", '[[routes.filters]]' + chr(10) + 'module = "noop"' + chr(10))}
{route("hs", jwt("hs", "HS256"))}
{route("es", jwt("es", "ES256"))}
{route("rl", rl)}
{route("jwt-rl", jwt("es", "ES256") + rl)}
{route("chain", jwt("es", "ES256") + rl + hdr)}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out", default=None)
    ap.add_argument("--fresh", action="store_true",
                    help="server.filter_recycling = false: a fresh instance for every filter call")
    args = ap.parse_args()
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/edgegate/target"))
    binary = os.path.join(target_dir, "release/edgegate")
    work = tempfile.mkdtemp(prefix="edgegate-filters-")
    procs = []
    try:
        o_port, e_port, e_admin = free_port(), free_port(), free_port()
        procs.append(nginx(origin_conf(o_port), work, "origin"))
        wait_http(f"http://127.0.0.1:{o_port}/")
        es_token, jwks = es256_token_and_jwks()
        jwks_path = os.path.join(work, "jwks.json")
        with open(jwks_path, "w") as f:
            json.dump(jwks, f)
        conf = os.path.join(work, "edgegate.toml")
        with open(conf, "w") as f:
            f.write(config(e_port, e_admin, o_port, args.workers, jwks_path, not args.fresh))
        eg = subprocess.Popen([binary, "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(eg)
        wait_http(f"http://127.0.0.1:{e_admin}/readyz")
        base = f"http://127.0.0.1:{e_port}"
        tokens = {"hs": hs256_token(), "es": es_token, "jwt-rl": es_token, "chain": es_token}
        routes = ["plain", "noop", "hs", "es", "rl", "jwt-rl", "chain"]
        # wrk sends the token through a header file argument.
        def wrk_args(route):
            t = tokens.get(route)
            return ["-H", f"Authorization: Bearer {t}"] if t else []
        import run as runmod
        results = {r: [] for r in routes}
        for r in routes:  # warm-up, and prove each route answers 200
            out = subprocess.run(["wrk", "-t1", "-c8", "-d1s", *wrk_args(r), f"{base}/{r}/x"],
                                 capture_output=True, text=True).stdout
            if "Non-2xx" in out:
                raise SystemExit(f"route /{r} does not answer 200:\n{out}")
        for rnd in range(args.rounds):
            order = routes if rnd % 2 == 0 else list(reversed(routes))
            for r in order:
                before = runmod.cpu_seconds([eg.pid])
                out = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                                      *wrk_args(r), f"{base}/{r}/x"], capture_output=True, text=True, check=True).stdout
                after = runmod.cpu_seconds([eg.pid])
                m = runmod.parse_wrk(out)
                m["cpu_us_per_req"] = (after - before) * 1e6 / max(m["requests"], 1)
                results[r].append(m)
                print(f"round {rnd + 1} /{r:6s} {m['rps']:8.0f} req/s  {m['cpu_us_per_req']:6.1f} CPU µs/req  "
                      f"p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  non-2xx {m['non2xx']}", flush=True)
        med = lambda r, k: statistics.median(x[k] for x in results[r])
        plain_cpu, plain_rps = med("plain", "cpu_us_per_req"), med("plain", "rps")
        print()
        print(f"medians over {args.rounds} rounds, {args.workers} worker thread(s), wrk -c{args.connections}, "
              f"{'fresh' if args.fresh else 'recycled'} filter instances")
        print(f"{'route':8s} {'req/s':>9s} {'vs plain':>9s} {'CPU µs/req':>11s} {'added µs':>9s} {'p99 ms':>7s}")
        summary = {}
        for r in routes:
            rps, cpu = med(r, "rps"), med(r, "cpu_us_per_req")
            summary[r] = {"rps": rps, "rps_ratio": rps / plain_rps, "cpu_us_per_req": cpu,
                          "added_us": cpu - plain_cpu, "p99_ms": med(r, "p99_ms")}
            print(f"/{r:7s} {rps:9.0f} {rps / plain_rps:9.3f} {cpu:11.1f} {cpu - plain_cpu:9.1f} {med(r, 'p99_ms'):7.2f}")
        # In-process breakdown from the gateway's own histograms (all rounds).
        import re, urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{e_admin}/metrics").read().decode()
        def mean(metric, filt):
            s = re.search(rf'{metric}_sum{{filter="{filt}"}} ([0-9.e+-]+)', text)
            c = re.search(rf'{metric}_count{{filter="{filt}"}} ([0-9.e+-]+)', text)
            return float(s.group(1)) / float(c.group(1)) * 1e6 if s and c and float(c.group(1)) else float("nan")
        print()
        print("per call, inside the gateway (mean of all calls): fresh instance (when one was made) / guest run, µs")
        breakdown = {}
        for filt in ("noop", "jwt-auth", "rate-limit", "headers"):
            breakdown[filt] = {"instantiate_us": mean("edgegate_filter_instantiate_seconds", filt),
                               "run_us": mean("edgegate_filter_run_seconds", filt)}
            print(f"  {filt:11s} {breakdown[filt]['instantiate_us']:7.1f} / {breakdown[filt]['run_us']:7.1f}")
        k6 = {}
        for r in ("plain", "jwt-rl", "chain"):
            env_token = tokens.get(r, "")
            os.environ["TOKEN"] = env_token
            os.environ["ROUTE"] = f"/{r}"
            k6[r] = run_k6_script(base, args.duration, work, r)
            print(f"k6 /{r:6s} {k6[r]['rps']:8.0f} req/s  p50 {k6[r]['p50_ms']:.2f} ms  p99 {k6[r]['p99_ms']:.2f} ms  "
                  f"thresholds {'ok' if k6[r]['thresholds_ok'] else 'FAILED'}")
        print()
        print(f"target no-op added ≤ 10 µs: {summary['noop']['added_us']:.1f} µs -> "
              f"{'met' if summary['noop']['added_us'] <= 10 else 'NOT met'}")
        print(f"target /jwt-rl ≥ 0.75× /plain req/s (wrk): {summary['jwt-rl']['rps_ratio']:.3f} -> "
              f"{'met' if summary['jwt-rl']['rps_ratio'] >= 0.75 else 'NOT met'}")
        for r in ("jwt-rl", "chain"):
            print(f"k6 /{r} vs /plain req/s: {k6[r]['rps'] / k6['plain']['rps']:.3f}")
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"args": vars(args), "rounds": results, "summary": summary, "k6": k6,
                           "breakdown": breakdown}, f, indent=2)
    finally:
        stop(procs)


def run_k6_script(base, duration, work, name):
    summary = os.path.join(work, f"k6-{name}.json")
    env = dict(os.environ, TARGET=base, DURATION=f"{duration}s")
    p = subprocess.run(["k6", "run", "--quiet", "--no-color", "--summary-export", summary,
                        os.path.join(ROOT, "loadtest/k6/filters.js")], capture_output=True, text=True, env=env)
    with open(summary) as f:
        m = json.load(f)["metrics"]
    return {"rps": m["http_reqs"]["rate"], "p50_ms": m["http_req_duration"]["med"],
            "p99_ms": m["http_req_duration"]["p(99)"], "thresholds_ok": p.returncode == 0}


if __name__ == "__main__":
    main()
