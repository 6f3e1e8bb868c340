#!/usr/bin/env python3
"""Image transform speed: edgegate's Wasm filter vs libvips vs the same code native.

Same input and output for all three, in one run, each on one CPU:
  - a 2 MP photo-like JPEG (1632x1224, q90), made by the filter's own
    `native gen` example;
  - vipsthumbnail (libvips, JPEG shrink-on-load) `-s 400x`, Q=80, metadata
    stripped, over a batch of copies in one process (VIPS_CONCURRENCY=1), so
    process start is amortised: ms per image;
  - the filter's transform compiled natively (`native bench`): ms per image;
  - edgegate (release) with the `image-transform` filter (sandbox, CPU
    deadline and memory cap on, no cache) in front of a local origin:
    sequential `?width=400&quality=80` requests over one keep-alive
    connection, ms per request; and the same URL without options (fetch and
    buffering only) to show what the transform itself takes.
Prints medians and the ratios the target is about (edgegate / vipsthumbnail ≤ 1.5).

Usage: python3 loadtest/images.py [--n 30] [--rounds 3] [--out FILE]
"""
import argparse, http.client, http.server, json, os, shutil, statistics, subprocess, tempfile, threading, time

from run import ROOT, free_port, wait_http, stop

QUERY = "width=400&quality=80"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30, help="images per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not shutil.which("vipsthumbnail"):
        raise SystemExit("vipsthumbnail is missing: run loadtest/setup.sh first")
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/edgegate/target"))
    binary = os.path.join(target_dir, "release/edgegate")
    if not os.path.exists(binary):
        raise SystemExit(f"no release binary at {binary}: cargo build --release -p edgegate")
    host = sh(["rustc", "-vV"]).split("host: ")[1].split()[0]
    guest_target = os.path.join(target_dir, "wasm-guests")
    env = dict(os.environ, CARGO_TARGET_DIR=guest_target)
    sh(["cargo", "build", "--release", "--locked", "--target", host, "-p", "image_transform",
        "--example", "native"], cwd=os.path.join(ROOT, "filters"), env=env)
    native = os.path.join(guest_target, host, "release/examples/native")

    work = tempfile.mkdtemp(prefix="edgegate-images-")
    procs = []
    try:
        img_dir = os.path.join(work, "img")
        os.makedirs(img_dir)
        photo = os.path.join(img_dir, "photo.jpg")
        sh([native, "gen", photo, "1632", "1224"])
        batch = []
        for i in range(args.n):
            p = os.path.join(work, f"copy{i}.jpg")
            shutil.copy(photo, p)
            batch.append(p)

        # Origin: a threaded static file server for the image.
        o_port = free_port()
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=work, **kw)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
        origin = http.server.ThreadingHTTPServer(("127.0.0.1", o_port), handler)
        threading.Thread(target=origin.serve_forever, daemon=True).start()

        e_port, e_admin = free_port(), free_port()
        conf = os.path.join(work, "edgegate.toml")
        with open(conf, "w") as f:
            f.write(f"""
[pop]
name = "bench"
[server]
threads = 1
drain_window = "0s"
[log]
access_log = false
level = "warn"
[admin]
listen = "127.0.0.1:{e_admin}"
[[listeners]]
listen = "127.0.0.1:{e_port}"
[upstreams.origin]
backends = ["127.0.0.1:{o_port}"]
[[routes]]
name = "img"
path_prefix = "/img"
upstream = "origin"
[[routes.filters]]
module = "image-transform"
timeout = "2s"
memory = "256MiB"
""")
        eg = subprocess.Popen(["taskset", "-c", "0", binary, "--config", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(eg)
        wait_http(f"http://127.0.0.1:{e_admin}/readyz")

        def edgegate(path, n):
            c = http.client.HTTPConnection("127.0.0.1", e_port, timeout=30)
            for _ in range(3):
                c.request("GET", path)
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, (r.status, body[:200])
            t = time.perf_counter()
            for _ in range(n):
                c.request("GET", path)
                r = c.getresponse()
                r.read()
            ms = (time.perf_counter() - t) * 1000 / n
            c.close()
            return ms, len(body)

        def vips(n):
            out = os.path.join(work, "vips-out")
            os.makedirs(out, exist_ok=True)
            t = time.perf_counter()
            subprocess.run(["taskset", "-c", "0", "vipsthumbnail", *batch[:n], "-s", "400x",
                            "-o", os.path.join(out, "%s.jpg[Q=80,strip]")],
                           check=True, env=dict(os.environ, VIPS_CONCURRENCY="1"))
            return (time.perf_counter() - t) * 1000 / n

        def native_ms(n):
            out = sh(["taskset", "-c", "0", native, "bench", photo, str(n), QUERY])
            return float(out.split()[0])

        rows = {"vipsthumbnail": [], "native": [], "edgegate": [], "edgegate_passthrough": []}
        for rnd in range(args.rounds):
            v = vips(args.n)
            nat = native_ms(args.n)
            e, size = edgegate(f"/img/photo.jpg?{QUERY}", args.n)
            pt, _ = edgegate("/img/photo.jpg", args.n)
            rows["vipsthumbnail"].append(v)
            rows["native"].append(nat)
            rows["edgegate"].append(e)
            rows["edgegate_passthrough"].append(pt)
            print(f"round {rnd + 1}: vipsthumbnail {v:7.2f} ms  native {nat:7.2f} ms  "
                  f"edgegate (wasm) {e:7.2f} ms ({size} bytes)  passthrough {pt:6.2f} ms", flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print()
        print(f"2 MP JPEG (1632x1224) -> 400 px wide JPEG q80, medians of {args.rounds} rounds x {args.n} images, one CPU")
        for k, v in med.items():
            print(f"  {k:22s} {v:8.2f} ms/image")
        print(f"  edgegate / vipsthumbnail  {med['edgegate'] / med['vipsthumbnail']:.3f}  (target <= 1.5)")
        print(f"  edgegate / native         {med['edgegate'] / med['native']:.3f}  (sandbox cost)")
        print(f"  native / vipsthumbnail    {med['native'] / med['vipsthumbnail']:.3f}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"rounds": rows, "median": med}, f, indent=2)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
