#!/usr/bin/env python3
"""Bounded soak test for rbee-node (issue 13; not run in CI). Python 3.11, stdlib only.

Three `rbee-node join` processes on 127.0.0.1 (free ports, their own temp data dirs, one
private pool key, each bootstrapped to the other two, mDNS off, a memory budget each). The demo
model is imported on node-1 only; node-2 and node-3 pull it from the pool. Then, for --minutes:

  traffic threads (--clients, default 2) against random nodes:
    chat           non-streaming chat, greedy; the text must be non-empty and the same for the
                   same prompt on every node (the nodes run the same model token-exactly)
    stream         streaming chat (SSE) to [DONE]; same text as the non-streaming answer
    stream_cancel  a stream the client closes after 1-3 chunks
    job_infer      an `infer` job followed on its event stream to `done`
    job_cancel     an `infer` job DELETEd after its first token: it must end as `cancelled`
                   and stop generating
    bad_input      bad JSON, wrong content type, max_tokens 0, an unknown operation, an
                   unknown model: each must get a 4xx with a JSON error message
  one model-management thread, one job at a time against nodes that are up:
    pull           model_pull of the demo model, on a node that lacks it (or has it: then it
                   must say `local`); afterwards the node's catalog must list it
    pull_cancel    a pull DELETEd at its first progress event: ends `cancelled`, catalogs nothing
    rm             `rbee-node models rm demo` (through the running node; only while both other
                   nodes hold the model), and removal of the small imported models
    import_fresh   model_import of a new small GGUF (a generated tiny llama model)
    reimport       the same file again, and the demo model again (a hard link under a new file
                   name, or the original): must say already present under the old name; under
                   a new name it must be refused, never renamed
  a killer: every --kill-every seconds one node (rotating) is SIGKILLed, left down
    --down-secs, then restarted on the same data dir and ports. A connection error from a node
    inside such a window counts as node_down, not as a defect.
  an RSS sampler: VmRSS of every node every --rss-interval seconds.

At the end: traffic stops, every node must go idle (no queued or live sequence, no running
job), the nodes get SIGTERM and must exit 0, `rbee-node models verify` runs on every data dir,
and every node log is searched for panics. Outcomes per request kind:

  ok           did what it should (for bad input: the expected 4xx with a message)
  clear_error  a 4xx/5xx with a non-empty JSON error message, or an SSE/job error event
  node_down    a connection error to a node while it was killed or restarting
  DEFECT       anything else: a 200 with empty text, no answer within --request-timeout, a 5xx
               without a message, a stream cut without an error event while its node was up,
               a cancelled job that keeps running, a greedy answer that differs between nodes,
               a panic in a node log, ...

Exit 0 only if there was no defect, every data dir verified clean, and every node's maximum
RSS stayed within --memory-budget + --rss-margin (the budget bounds models; the process adds
its runtime, buffers and the mapped model file on top).
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

OK, CLEAR, DOWN, DEFECT = "ok", "clear_error", "node_down", "DEFECT"
OUTCOMES = (OK, CLEAR, DOWN, DEFECT)
KINDS = ("chat", "stream", "stream_cancel", "job_infer", "job_cancel", "bad_input",
         "pull", "pull_cancel", "rm", "import_fresh", "reimport")

PROMPTS = [
    "Name a colour.",
    "Complete the list of primary colours: red, blue and",
    "The capital of France is",
    "Write one sentence about the sea.",
    "Count from one to ten:",
]


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(s):
    """The same units as rbee-node's --memory-budget (crates/rbee-node/src/config.rs)."""
    t = s.strip()
    i = 0
    while i < len(t) and (t[i].isdigit() or t[i] == "."):
        i += 1
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6,
             "mib": MIB, "g": 1e9, "gb": 1e9, "gib": 1 << 30}
    unit = t[i:].strip().lower()
    if unit not in units or not t[:i]:
        raise argparse.ArgumentTypeError(f"`{s}` is not a size (e.g. 700MiB, 1GiB)")
    return int(float(t[:i]) * units[unit])


def tiny_gguf(model_name):
    """A minimal valid llama GGUF (rbee_format::gguf::GgufWriter::tiny_model("llama")), its bytes made
    unique by `general.name`: a fresh small model for imports."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    u32, f32, string, array = 4, 6, 8, 9
    tokens = ["<unk>", "<s>", "</s>", "a"]
    kv = [
        ("general.architecture", string, s("llama")),
        ("general.name", string, s(model_name)),
        ("general.file_type", u32, struct.pack("<I", 0)),
        ("llama.block_count", u32, struct.pack("<I", 2)),
        ("llama.context_length", u32, struct.pack("<I", 128)),
        ("llama.embedding_length", u32, struct.pack("<I", 8)),
        ("llama.feed_forward_length", u32, struct.pack("<I", 16)),
        ("llama.attention.head_count", u32, struct.pack("<I", 2)),
        ("llama.attention.layer_norm_rms_epsilon", f32, struct.pack("<f", 1e-5)),
        ("tokenizer.ggml.model", string, s("llama")),
        ("tokenizer.ggml.scores", array, struct.pack("<IQ", f32, 4) + b"\0" * 16),
        ("tokenizer.ggml.tokens", array,
         struct.pack("<IQ", string, len(tokens)) + b"".join(s(t) for t in tokens)),
    ]
    tensors = [("token_embd.weight", [8, 4]), ("output_norm.weight", [8])]
    for i in range(2):
        tensors.append((f"blk.{i}.attn_norm.weight", [8]))
        for p in "qkv":
            tensors.append((f"blk.{i}.attn_{p}.weight", [8, 8]))
        tensors.append((f"blk.{i}.ffn_down.weight", [16, 8]))

    def align(n):
        return (n + 31) // 32 * 32

    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, ty, val in kv:
        out += s(key) + struct.pack("<I", ty) + val
    offsets, end = [], 0
    for name, dims in tensors:
        n = 4
        for d in dims:
            n *= d
        off = align(end)
        end = off + n
        offsets.append((off, n))
        out += s(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, off)
    start = align(len(out))
    out += b"\0" * (start - len(out))
    for off, n in offsets:
        out += b"\0" * (start + off - len(out)) + b"\0" * n
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# HTTP on loopback


class ConnErr(Exception):
    """A connection-level failure: refused, reset, or a response cut short."""


class Hang(Exception):
    """No answer within the timeout."""


def http_req(port, method, path, body=None, raw=None, ctype="application/json", timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": ctype} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    except TimeoutError as e:
        raise Hang(f"{method} {path}: no answer within {timeout}s") from e
    except (OSError, http.client.HTTPException) as e:
        raise ConnErr(f"{method} {path}: {type(e).__name__}: {e}") from e
    finally:
        conn.close()


class Stream:
    """A request whose response body is read line by line (SSE)."""

    def __init__(self, port, method, path, body=None, timeout=60):
        self.what = f"{method} {path}"
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            self.conn.request(method, path, body=data, headers=headers)
            self.resp = self.conn.getresponse()
        except TimeoutError as e:
            self.close()
            raise Hang(f"{self.what}: no response headers within {timeout}s") from e
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ConnErr(f"{self.what}: {type(e).__name__}: {e}") from e
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def set_timeout(self, secs):
        self.timeout = secs
        if self.conn.sock is not None:
            self.conn.sock.settimeout(secs)

    def read_rest(self):
        try:
            return self.resp.read()
        except TimeoutError as e:
            raise Hang(f"{self.what}: body not read within {self.timeout}s") from e
        except (OSError, http.client.HTTPException) as e:
            raise ConnErr(f"{self.what}: {type(e).__name__}: {e}") from e

    def lines(self):
        while True:
            try:
                line = self.resp.readline()
            except TimeoutError as e:
                raise Hang(f"{self.what}: nothing for {self.timeout}s mid-stream") from e
            except (OSError, http.client.HTTPException) as e:
                raise ConnErr(f"{self.what}: stream cut: {type(e).__name__}: {e}") from e
            if not line:
                return
            yield line.decode("utf-8", "replace").rstrip("\r\n")

    def sse_data(self):
        """The `data:` payloads of the stream, parsed as JSON where they are JSON."""
        for line in self.lines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                try:
                    yield json.loads(payload)
                except ValueError:
                    yield payload

    def abort(self):
        """Close the connection as a client that goes away does."""
        sock = self.conn.sock
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass


def error_message(data):
    """The `error.message` of an error body (OpenAI's shape), or None."""
    try:
        v = json.loads(data)
    except (ValueError, TypeError):
        return None
    err = v.get("error") if isinstance(v, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg if isinstance(msg, str) and msg.strip() else None


def judge_error(status, data, served=None):
    msg = error_message(data)
    via = f" (from {served})" if served else ""
    if status >= 400 and msg:
        return CLEAR, f"{status}: {msg}"
    if status < 400:
        return DEFECT, f"unexpected status {status}{via}: {data[:300]!r}"
    return DEFECT, f"{status} without a JSON error message{via}: {data[:300]!r}"


def short(msg, n=110):
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Nodes


class Node:
    def __init__(self, soak, idx, api_port, p2p_port):
        self.soak = soak
        self.idx = idx
        self.name = f"node-{idx}"
        self.data = soak.tmp / self.name
        self.api_port = api_port
        self.p2p_port = p2p_port
        self.log_path = soak.tmp / f"{self.name}.log"
        self.proc = None
        self.starts = 0
        self.kills = 0
        self.windows = []  # [down since, up again (None while down)]
        self.lock = threading.Lock()
        self.max_rss = 0
        self.max_rss_at = 0.0
        self.max_rss_split = (0, 0)
        self.exit_codes = []
        self.data.mkdir(parents=True)

    @property
    def p2p_addr(self):
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}"

    def __str__(self):
        return self.name

    def start(self):
        s = self.soak
        args = [str(s.bin), "--data-dir", str(self.data), "--config", str(s.config),
                "join", "--api-addr", f"127.0.0.1:{self.api_port}", "--name", self.name,
                "--p2p-addr", self.p2p_addr, "--no-mdns",
                "--memory-budget", str(s.args.memory_budget), "--drain-secs", "5"]
        for other in s.nodes:
            if other is not self:
                args += ["--bootstrap", other.p2p_addr]
        self.starts += 1
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== soak: start #{self.starts} of {self.name} at "
                    f"{time.strftime('%H:%M:%S')} =====\n".encode())
            f.flush()
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         env=s.node_env, start_new_session=True)

    def wait_healthy(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                st, _, _ = http_req(self.api_port, "GET", "/health", timeout=5)
                if st == 200:
                    return True
            except (ConnErr, Hang):
                pass
            time.sleep(0.1)
        return False

    def is_up(self):
        with self.lock:
            return not self.windows or self.windows[-1][1] is not None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.kills += 1

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, upto=None, lines=30):
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        if upto is not None:
            data = data[: upto + 4096]
        text = re.sub(r"\x1b\[[0-9;]*m", "", data.decode("utf-8", "replace"))
        return "\n".join(text.splitlines()[-lines:])


def read_rss_kib(pid):
    """(VmRSS, RssAnon, RssFile) in KiB from /proc/<pid>/status; zeros when it is gone."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                    vals[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return vals.get("VmRSS", 0), vals.get("RssAnon", 0), vals.get("RssFile", 0)


# ---------------------------------------------------------------------------------------------
# The soak


class SetupError(Exception):
    pass


class Soak:
    def __init__(self, args, binary, model):
        self.args = args
        self.bin = binary
        self.model = model
        self.tmp = Path(tempfile.mkdtemp(prefix="rbee-soak-"))
        self.config = self.tmp / "config.toml"
        self.config.write_text("# rbee soak: defaults only\n")
        (self.tmp / "imports").mkdir()
        self.stop = threading.Event()
        self.fatal = threading.Event()
        self.rss_stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = collections.defaultdict(collections.Counter)
        self.notes = collections.defaultdict(collections.Counter)
        self.first_note = {}
        self.defects = []
        self.script_errors = []
        self.greedy = {}
        self.greedy_checks = 0
        self.kills = 0
        self.restarts = 0
        self.import_counter = 0
        self.nodes = []
        self.threads = []
        self.t_start = time.time()

    # -- bookkeeping ------------------------------------------------------------------------

    def record(self, kind, node, outcome, detail):
        with self.lock:
            self.counts[kind][outcome] += 1
            if outcome in (CLEAR, OK, DOWN) and detail:
                key = short(re.sub(r"[0-9a-f]{12,}|\d+", "#", detail), 100)
                self.notes[(kind, outcome)][key] += 1
                self.first_note.setdefault((kind, outcome, key),
                                           f"{node} at {time.time() - self.t_start:.0f}s: "
                                           f"{short(detail, 600)}")
            if outcome == DEFECT:
                self.defects.append({"t": time.time() - self.t_start, "kind": kind,
                                     "node": node, "detail": detail,
                                     "log_at": node.log_size() if node else None})
        if outcome == DEFECT:
            log(f"DEFECT {kind} on {node}: {short(detail, 300)}")

    def down_during(self, node, t0, t1, slack=1.5):
        with node.lock:
            return any(a - slack <= t1 and (b is None or b + slack >= t0)
                       for a, b in node.windows)

    def any_down_during(self, t0, t1):
        return [n.name for n in self.nodes if self.down_during(n, t0, t1)]

    def run_op(self, kind, node, fn, *a):
        t0 = time.time()
        try:
            outcome, detail = fn(node, *a)
        except (ConnErr, Hang) as e:
            t1 = time.time()
            if self.down_during(node, t0, t1):
                outcome, detail = DOWN, str(e)
            else:
                others = self.any_down_during(t0, t1)
                why = "no answer" if isinstance(e, Hang) else "connection error"
                outcome = DEFECT
                detail = (f"{why} while {node.name} was up ({e}; {t1 - t0:.1f}s; "
                          f"nodes down meanwhile: {', '.join(others) or 'none'})")
        except Exception:  # a bug of this script, not of the node
            tb = traceback.format_exc()
            with self.lock:
                self.script_errors.append(f"{kind} on {node}: {tb}")
            log(f"script error in {kind} on {node}:\n{tb}")
            return None
        self.record(kind, node, outcome, detail)
        return outcome

    def greedy_check(self, space, prompt, max_tokens, text, served):
        key = (space, prompt, max_tokens)
        with self.lock:
            self.greedy_checks += 1
            first = self.greedy.setdefault(key, (text, served))
        if first[0] == text:
            return OK, ""
        return DEFECT, (f"greedy answer differs for {prompt!r}/{max_tokens}: {text!r} (from "
                        f"{served}) vs {first[0]!r} (from {first[1]})")

    # -- setup ------------------------------------------------------------------------------

    def free_ports(self, n):
        socks = []
        try:
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()

    def cli(self, node, *cmd, timeout=120):
        env = dict(self.cli_env, RBEE_API_ADDR=f"127.0.0.1:{node.api_port}")
        return subprocess.run([str(self.bin), "--data-dir", str(node.data), "--config",
                               str(self.config), *cmd], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def setup(self):
        a = self.args
        base_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RBEE_", "HF_", "HUGGINGFACE"))
                    and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        base_env.update({
            "RUST_LOG": a.log_level, "RUST_BACKTRACE": "1",
            "XDG_CONFIG_HOME": str(self.tmp / "xdg-config"),
            "XDG_DATA_HOME": str(self.tmp / "xdg-data"),
            "HF_HOME": str(self.tmp / "hf"),
            # Nothing leaves loopback: the hub is a closed port here.
            "HF_ENDPOINT": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "NO_COLOR": "1",
        })
        self.cli_env = base_env
        out = subprocess.run([str(self.bin), "--data-dir", str(self.tmp / "keygen"), "--config",
                              str(self.config), "pool", "new"], env=base_env,
                             capture_output=True, text=True, timeout=60)
        key = out.stdout.strip()
        if out.returncode != 0 or len(key) != 64:
            raise SetupError(f"`rbee-node pool new` failed: {out.stderr.strip()}")
        self.node_env = dict(base_env, RBEE_POOL_KEY=key)
        ports = self.free_ports(6)
        self.nodes = [Node(self, i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(3)]
        self.start_thread(self.rss_sampler, "rss")
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            if not n.wait_healthy(90):
                raise SetupError(f"{n} did not come up; log:\n{n.log_tail()}")
        log("3 nodes up: " + ", ".join(f"{n} api 127.0.0.1:{n.api_port} p2p {n.p2p_port}"
                                        for n in self.nodes))
        t0 = time.time()
        while True:
            views = [self.connected_peers(n) for n in self.nodes]
            if all(v == 2 for v in views):
                break
            if time.time() - t0 > 90:
                raise SetupError(f"the pool did not form within 90s (connected peers: {views})")
            time.sleep(0.25)
        log(f"pool formed in {time.time() - t0:.1f}s")

        n1 = self.nodes[0]
        t0 = time.time()
        end, ev, status, _ = self.run_job(n1, {"operation": "model_import",
                                               "source": str(self.model), "name": "demo"}, 600)
        if end != "done":
            raise SetupError(f"importing the demo model on node-1 failed: {ev}")
        log(f"demo model imported on node-1 in {time.time() - t0:.1f}s")
        for n in self.nodes[1:]:
            t0 = time.time()
            while True:
                end, ev, status, _ = self.run_job(n, {"operation": "model_pull",
                                                      "model": "demo"}, 600)
                if end == "done":
                    break
                if time.time() - t0 > 120:
                    raise SetupError(f"{n} could not pull demo from the pool: {ev}")
                time.sleep(1)
            log(f"{n} pulled demo (source {ev['result'].get('source')}) in "
                f"{time.time() - t0:.1f}s")
        for n in self.nodes:
            t0 = time.time()
            st, data, h = http_req(n.api_port, "POST", "/v1/chat/completions",
                                   self.chat_body(PROMPTS[0], 8, False),
                                   timeout=a.request_timeout)
            if st != 200:
                raise SetupError(f"warm-up chat on {n}: {st} {data[:300]!r}")
            log(f"warm-up chat on {n}: served by {h.get('x-rbee-node')} in "
                f"{time.time() - t0:.1f}s")

    def connected_peers(self, node):
        try:
            st, data, _ = http_req(node.api_port, "GET", "/v1/pool", timeout=10)
            if st != 200:
                return -1
            return sum(1 for p in json.loads(data)["peers"] if p.get("connected"))
        except (ConnErr, Hang, ValueError, KeyError):
            return -1

    def start_thread(self, fn, name, *a):
        t = threading.Thread(target=fn, args=a, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    # -- background threads -----------------------------------------------------------------

    def rss_sampler(self):
        with open(self.tmp / "rss.csv", "w") as f:
            f.write("secs," + ",".join(f"node-{i + 1}_{c}_mib" for i in range(3)
                                       for c in ("rss", "anon", "file")) + "\n")
            while not self.rss_stop.is_set():
                row = [f"{time.time() - self.t_start:.0f}"]
                for n in self.nodes:
                    p = n.proc
                    rss, anon, file = (read_rss_kib(p.pid) if p is not None and p.poll() is None
                                       else (0, 0, 0))
                    if rss * 1024 > n.max_rss:
                        n.max_rss, n.max_rss_at = rss * 1024, time.time() - self.t_start
                        n.max_rss_split = (anon * 1024, file * 1024)
                    row += [f"{rss / 1024:.0f}", f"{anon / 1024:.0f}", f"{file / 1024:.0f}"]
                f.write(",".join(row) + "\n")
                f.flush()
                self.rss_stop.wait(self.args.rss_interval)

    def killer(self):
        every = self.args.kill_every
        k = 0
        next_t = time.time() + every
        while True:
            if self.stop.wait(max(0.0, next_t - time.time())):
                return
            if self.end_at - time.time() < 15:
                return
            node = self.nodes[k % 3]
            k += 1
            with node.lock:
                node.windows.append([time.time(), None])
            node.kill()
            self.kills += 1
            log(f"SIGKILL {node} (kill #{self.kills}); restarting in {self.args.down_secs}s")
            time.sleep(self.args.down_secs)
            started = False
            for _ in range(3):
                node.start()
                if node.wait_healthy(90):
                    started = True
                    break
                if node.proc.poll() is None:
                    break
                time.sleep(2)
            if not started:
                self.record("restart", node, DEFECT,
                            f"{node} did not come back after SIGKILL; log:\n{node.log_tail()}")
                self.fatal.set()
                return
            with node.lock:
                node.windows[-1][1] = time.time() + 2.0
            self.restarts += 1
            log(f"{node} back up (down {time.time() - node.windows[-1][0]:.1f}s)")
            next_t += every

    def traffic(self, seed):
        rng = random.Random(seed)
        ops = [("chat", self.op_chat, 25), ("stream", self.op_stream, 25),
               ("stream_cancel", self.op_stream_cancel, 15),
               ("job_infer", self.op_job_infer, 10), ("job_cancel", self.op_job_cancel, 15),
               ("bad_input", self.op_bad_input, 10)]
        weights = [w for *_, w in ops]
        while not self.stop.is_set():
            kind, fn, _ = rng.choices(ops, weights)[0]
            self.run_op(kind, rng.choice(self.nodes), fn, rng)
            self.stop.wait(rng.uniform(0, self.args.pause))

    def admin(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            up = [n for n in self.nodes if n.is_up()]
            if not up:
                self.stop.wait(1)
                continue
            holding = {n.name: self.model_names(n) for n in self.nodes}
            lacking = [n for n in up if holding[n.name] is not None
                       and "demo" not in holding[n.name]]
            r = rng.random()
            if lacking:
                if r < 0.7:
                    self.run_op("pull", rng.choice(lacking), self.op_pull)
                else:
                    self.run_op("pull_cancel", rng.choice(lacking), self.op_pull_cancel)
            elif r < 0.15:
                # Remove the demo model only where both other nodes are up and hold it, so the
                # pool never loses its last copies.
                ok = [n for n in up if "demo" in (holding[n.name] or ())
                      and all(o is n or (o.is_up() and "demo" in (holding[o.name] or ()))
                              for o in self.nodes)]
                if ok:
                    node = rng.choice(ok)
                    if self.run_op("rm", node, self.op_rm_demo) == OK and rng.random() < 0.5:
                        self.run_op("pull", node, self.op_pull)
                else:
                    self.run_op("pull", rng.choice(up), self.op_pull)
            elif r < 0.3:
                # Already present here: the pull must say so (`local`).
                self.run_op("pull", rng.choice(up), self.op_pull)
            elif r < 0.6:
                self.run_op("import_fresh", rng.choice(up), self.op_import_fresh, rng)
            elif r < 0.88:
                with_demo = [n for n in up if "demo" in (holding[n.name] or ())]
                if with_demo:
                    self.run_op("reimport", rng.choice(with_demo), self.op_reimport_demo, rng)
            else:
                self.run_op("bad_input", rng.choice(up), self.op_bad_pull)
            self.stop.wait(rng.uniform(0.5, 2 * self.args.pause + 1))

    # -- request kinds ----------------------------------------------------------------------

    def chat_body(self, prompt, max_tokens, stream):
        return {"model": "demo", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0, "stream": stream}

    def pick(self, rng):
        sizes = [m for m in (8, 16, 24, 32) if m <= self.args.max_tokens] or [8]
        return rng.choice(PROMPTS), rng.choice(sizes)

    def op_chat(self, node, rng):
        prompt, mt = self.pick(rng)
        st, data, h = http_req(node.api_port, "POST", "/v1/chat/completions",
                               self.chat_body(prompt, mt, False),
                               timeout=self.args.request_timeout)
        served = h.get("x-rbee-node")
        if st != 200:
            return judge_error(st, data, served)
        try:
            v = json.loads(data)
            choice = v["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return DEFECT, f"200 with a malformed body (from {served}): {data[:300]!r}"
        if not text:
            return DEFECT, (f"200 with empty text (finish_reason {choice.get('finish_reason')}, "
                            f"usage {v.get('usage')}, from {served})")
        return self.greedy_check("chat", prompt, mt, text, served)

    def read_chat_stream(self, s, cancel_after=None):
        text, finish, chunks, done, err = "", None, 0, False, None
        for v in s.sse_data():
            if v == "[DONE]":
                done = True
                break
            if not isinstance(v, dict):
                return DEFECT, f"SSE data that is not JSON: {v!r}", None
            if "error" in v:
                e = v["error"]
                err = (e.get("message") if isinstance(e, dict) else str(e)) or ""
                continue
            for c in v.get("choices") or []:
                piece = (c.get("delta") or {}).get("content") or ""
                if piece:
                    text += piece
                    chunks += 1
                finish = c.get("finish_reason") or finish
            if cancel_after and chunks >= cancel_after:
                s.abort()
                return OK, f"closed after {chunks} chunks", None
        if err is not None:
            if err.strip():
                return CLEAR, f"SSE error event: {err}", None
            return DEFECT, "SSE error event without a message", None
        if not done:
            raise ConnErr(f"{s.what}: stream ended before data: [DONE], no error event "
                          f"({chunks} chunks so far)")
        if finish is None:
            return DEFECT, "stream reached [DONE] without a finish_reason", None
        if not text:
            return DEFECT, f"stream with empty text (finish_reason {finish})", None
        return OK, "", text

    def op_stream(self, node, rng):
        prompt, mt = self.pick(rng)
        s = Stream(node.api_port, "POST", "/v1/chat/completions",
                   self.chat_body(prompt, mt, True), timeout=self.args.request_timeout)
        try:
            served = s.headers.get("x-rbee-node")
            if s.status != 200:
                return judge_error(s.status, s.read_rest(), served)
            outcome, detail, text = self.read_chat_stream(s)
            if text is None:
                return outcome, detail
            return self.greedy_check("chat", prompt, mt, text, served)
        finally:
            s.close()

    def op_stream_cancel(self, node, rng):
        prompt = rng.choice(PROMPTS)
        s = Stream(node.api_port, "POST", "/v1/chat/completions",
                   self.chat_body(prompt, 32, True), timeout=self.args.request_timeout)
        try:
            if s.status != 200:
                return judge_error(s.status, s.read_rest(), s.headers.get("x-rbee-node"))
            outcome, detail, text = self.read_chat_stream(s, cancel_after=rng.randint(1, 3))
            if text is not None:
                return OK, "ended before the client closed it"
            return outcome, detail
        finally:
            s.close()

    def job_events(self, s):
        for v in s.sse_data():
            if isinstance(v, dict):
                yield v

    def infer_job(self, node, rng, cancel):
        prompt, mt = self.pick(rng)
        if cancel:
            mt = 32
        body = {"operation": "infer", "model": "demo",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": mt, "temperature": 0}
        st, data, _ = http_req(node.api_port, "POST", "/v1/jobs", body, timeout=30)
        if st != 202:
            return judge_error(st, data)
        job = json.loads(data)
        jid = job["job_id"]
        s = Stream(node.api_port, "GET", job["stream_url"], timeout=self.args.request_timeout)
        cancelled_at, tokens_after, terminal = None, 0, None
        try:
            if s.status != 200:
                return judge_error(s.status, s.read_rest())
            for ev in self.job_events(s):
                ty = ev.get("type")
                if ty == "token" and cancelled_at is not None:
                    tokens_after += 1
                if ty == "token" and cancel and cancelled_at is None:
                    dst, ddata, _ = http_req(node.api_port, "DELETE", f"/v1/jobs/{jid}",
                                             timeout=30)
                    if dst != 200:
                        return judge_error(dst, ddata) if dst >= 400 else (
                            DEFECT, f"DELETE answered {dst}: {ddata[:200]!r}")
                    cancelled_at = time.time()
                    s.set_timeout(30)
                if ty in ("done", "error"):
                    terminal = ev
                    break
        except Hang as e:
            if cancelled_at is not None:
                return DEFECT, f"job {jid} did not end within 30s of DELETE ({e})"
            raise
        finally:
            s.close()
        if terminal is None:
            raise ConnErr(f"job {jid}: event stream ended without a done or error event")
        sst, sdata, _ = http_req(node.api_port, "GET", f"/v1/jobs/{jid}", timeout=30)
        status = json.loads(sdata).get("status") if sst == 200 else f"HTTP {sst}"
        if terminal["type"] == "error":
            msg = terminal.get("message") or ""
            if cancelled_at is not None:
                if status != "cancelled":
                    return DEFECT, f"cancelled job {jid} ended with status {status}: {msg}"
                if tokens_after > 2:
                    return DEFECT, f"job {jid} sent {tokens_after} tokens after DELETE"
                return OK, ""
            if not msg.strip():
                return DEFECT, f"job {jid} error event without a message"
            if status != "failed":
                return DEFECT, f"job {jid} failed ({msg}) but its status is {status}"
            return CLEAR, f"job error: {msg}"
        result = terminal.get("result") or {}
        if status != "done":
            return DEFECT, f"job {jid} sent done but its status is {status}"
        text = result.get("text")
        if not text:
            return DEFECT, f"job {jid} done with empty text: {result}"
        if cancelled_at is not None:
            if tokens_after > 2:
                return DEFECT, (f"job {jid} kept generating after DELETE ({tokens_after} "
                                f"tokens) and ended done")
            return OK, "finished before the cancel took effect"
        return self.greedy_check("job", prompt, mt, text, result.get("node"))

    def op_job_infer(self, node, rng):
        return self.infer_job(node, rng, cancel=False)

    def op_job_cancel(self, node, rng):
        return self.infer_job(node, rng, cancel=True)

    def op_bad_input(self, node, rng):
        port, t = node.api_port, 30
        sub = rng.choice(["bad_json", "content_type", "max_tokens_0", "bad_operation",
                          "unknown_model"])
        if sub == "bad_json":
            st, data, _ = http_req(port, "POST", "/v1/chat/completions",
                                   raw=b'{"model": "demo", "messages": [{"role": ', timeout=t)
        elif sub == "content_type":
            st, data, _ = http_req(port, "POST", "/v1/chat/completions",
                                   raw=json.dumps(self.chat_body("Hi", 8, False)).encode(),
                                   ctype="text/plain", timeout=t)
        elif sub == "max_tokens_0":
            body = self.chat_body("Hi", 8, False)
            body["max_tokens"] = 0
            st, data, _ = http_req(port, "POST", "/v1/chat/completions", body, timeout=t)
        elif sub == "bad_operation":
            st, data, _ = http_req(port, "POST", "/v1/jobs",
                                   {"operation": "make_coffee", "model": "demo"}, timeout=t)
        else:
            body = self.chat_body("Hi", 8, False)
            body["model"] = f"no-such-model-{rng.randrange(10**6)}"
            st, data, _ = http_req(port, "POST", "/v1/chat/completions", body,
                                   timeout=self.args.request_timeout)
        msg = error_message(data)
        if 400 <= st < 500 and msg:
            return OK, f"{sub}: {st}"
        if sub == "unknown_model" and st >= 500 and msg:
            return CLEAR, f"{sub}: {st}: {msg}"
        return DEFECT, f"bad input `{sub}` got {st}: {data[:300]!r}"

    # -- model management -------------------------------------------------------------------

    def model_names(self, node):
        try:
            st, data, _ = http_req(node.api_port, "GET", "/v1/models", timeout=15)
            if st != 200:
                return None
            return {m["id"] for m in json.loads(data)["data"]}
        except (ConnErr, Hang, ValueError, KeyError):
            return None

    def run_job(self, node, body, timeout, cancel_on=None):
        """POSTs a job and follows it to its end: ("done"|"error", event, status, cancelled)
        or ("http", (status, body), None, False) when it was refused."""
        st, data, _ = http_req(node.api_port, "POST", "/v1/jobs", body, timeout=30)
        if st != 202:
            return "http", (st, data), None, False
        job = json.loads(data)
        jid = job["job_id"]
        s = Stream(node.api_port, "GET", job["stream_url"], timeout=timeout)
        terminal, cancelled = None, False
        try:
            if s.status != 200:
                return "http", (s.status, s.read_rest()), None, False
            for ev in self.job_events(s):
                if cancel_on and not cancelled and ev.get("type") == cancel_on:
                    dst, ddata, _ = http_req(node.api_port, "DELETE", f"/v1/jobs/{jid}",
                                             timeout=30)
                    if dst != 200:
                        return "delete", (dst, ddata), None, False
                    cancelled = True
                    s.set_timeout(60)
                if ev.get("type") in ("done", "error"):
                    terminal = ev
                    break
        finally:
            s.close()
        if terminal is None:
            raise ConnErr(f"job {jid} ({body['operation']}): event stream ended without a "
                          "done or error event")
        sst, sdata, _ = http_req(node.api_port, "GET", f"/v1/jobs/{jid}", timeout=30)
        status = json.loads(sdata).get("status") if sst == 200 else f"HTTP {sst}"
        return terminal["type"], terminal, status, cancelled

    def job_failure(self, end, ev, status):
        """Judges a job that did not end `done`."""
        if end == "http":
            return judge_error(*ev)
        if end == "delete":
            return DEFECT, f"DELETE of a running job answered {ev[0]}: {ev[1][:200]!r}"
        msg = ev.get("message") or ""
        if not msg.strip():
            return DEFECT, "job error event without a message"
        if status not in ("failed", "cancelled"):
            return DEFECT, f"job failed ({msg}) but its status is {status}"
        return CLEAR, f"job error: {msg}"

    def op_pull(self, node):
        end, ev, status, _ = self.run_job(node, {"operation": "model_pull", "model": "demo"},
                                          self.args.request_timeout * 3)
        if end != "done":
            return self.job_failure(end, ev, status)
        res = ev.get("result") or {}
        names = self.model_names(node)
        if names is not None and "demo" not in names:
            return DEFECT, f"pull done ({res}) but {node}'s catalog lacks demo: {sorted(names)}"
        if status != "done":
            return DEFECT, f"pull sent done but its status is {status}"
        return OK, f"source {res.get('source')}"

    def op_pull_cancel(self, node):
        end, ev, status, cancelled = self.run_job(
            node, {"operation": "model_pull", "model": "demo"}, self.args.request_timeout,
            cancel_on="progress")
        names = self.model_names(node)
        if end == "done":
            return OK, "finished before the cancel took effect"
        if end == "error" and cancelled:
            if status != "cancelled":
                return DEFECT, f"cancelled pull ended with status {status}: {ev.get('message')}"
            if names is not None and "demo" in names:
                return DEFECT, "a cancelled pull left demo in the catalog"
            return OK, "cancelled, nothing cataloged"
        return self.job_failure(end, ev, status)

    def op_rm_demo(self, node):
        t0 = time.time()
        out = self.cli(node, "models", "rm", "demo")
        text = (out.stdout + out.stderr).strip()
        if "panicked at" in text:
            return DEFECT, f"`models rm` panicked: {text[-500:]}"
        if out.returncode != 0:
            if self.down_during(node, t0, time.time()):
                return DOWN, text
            if text and len(text.splitlines()) <= 3:
                return CLEAR, f"models rm: {text}"
            return DEFECT, f"`models rm demo` exited {out.returncode}: {text[-500:]!r}"
        names = self.model_names(node)
        if names is not None and "demo" in names:
            return DEFECT, f"`models rm demo` said {out.stdout.strip()!r} but demo is listed"
        return OK, ""

    def op_import_fresh(self, node, rng):
        with self.lock:
            self.import_counter += 1
            n = self.import_counter
        name = f"tiny-{n}"
        path = self.tmp / "imports" / f"soak-tiny-{n}.gguf"
        path.write_bytes(tiny_gguf(f"soak tiny model {n} {rng.random()}"))
        end, ev, status, _ = self.run_job(node, {"operation": "model_import",
                                                 "source": str(path), "name": name}, 120)
        if end != "done":
            return self.job_failure(end, ev, status)
        res = ev.get("result") or {}
        if res.get("already_present") or res.get("name") != name:
            return DEFECT, f"a fresh import reported {res}"
        # The same file again: already present, under the name it has.
        end, ev, status, _ = self.run_job(node, {"operation": "model_import",
                                                 "source": str(path)}, 120)
        if end != "done":
            self.record("reimport", node, *self.job_failure(end, ev, status))
        else:
            res = ev.get("result") or {}
            if res.get("already_present") is True and res.get("name") == name:
                self.record("reimport", node, OK, "")
            else:
                self.record("reimport", node, DEFECT, f"re-import of {name} reported {res}")
        if rng.random() < 0.5:
            end, ev, status, _ = self.run_job(node, {"operation": "model_remove",
                                                     "model": name}, 120)
            if end != "done":
                self.record("rm", node, *self.job_failure(end, ev, status))
            else:
                names = self.model_names(node)
                if names is not None and name in names:
                    self.record("rm", node, DEFECT, f"removed {name} but it is still listed")
                else:
                    self.record("rm", node, OK, "")
        return OK, ""

    def op_reimport_demo(self, node, rng):
        with self.lock:
            self.import_counter += 1
            n = self.import_counter
        variant = rng.choice(["copy", "same", "new_name"])
        src = self.model
        if variant != "same":
            src = self.tmp / "imports" / f"demo-copy-{n}.gguf"
            try:
                os.link(self.model, src)
            except OSError:
                shutil.copyfile(self.model, src)
        body = {"operation": "model_import", "source": str(src)}
        wanted = {"copy": None, "same": "demo", "new_name": f"demo-other-{n}"}[variant]
        if wanted:
            body["name"] = wanted
        try:
            end, ev, status, _ = self.run_job(node, body, 300)
        finally:
            if src != self.model:
                src.unlink(missing_ok=True)
        names = self.model_names(node)
        if variant == "new_name":
            if names is not None and ("demo" not in names or wanted in names):
                return DEFECT, (f"re-import of the demo bytes as `{wanted}` changed the "
                                f"catalog: {sorted(names)} ({ev})")
            if end == "error" and "already cataloged" in (ev.get("message") or ""):
                return OK, "refused under a new name"
            if end == "done":
                res = ev.get("result") or {}
                return DEFECT, f"re-import of the demo bytes as `{wanted}` reported {res}"
            return self.job_failure(end, ev, status)
        if end != "done":
            return self.job_failure(end, ev, status)
        res = ev.get("result") or {}
        if res.get("already_present") is not True or res.get("name") != "demo":
            return DEFECT, f"re-import of the demo model ({variant}) reported {res}"
        if names is not None and "demo" not in names:
            return DEFECT, f"after a re-import demo is missing: {sorted(names)}"
        return OK, ""

    def op_bad_pull(self, node):
        end, ev, status, _ = self.run_job(node, {"operation": "model_pull",
                                                 "model": "no-such-model-anywhere"}, 120)
        if end == "http":
            st, data = ev
            if 400 <= st < 500 and error_message(data):
                return OK, f"pull of an unknown model: {st}"
            return judge_error(st, data)
        if end == "error" and (ev.get("message") or "").strip() and status == "failed":
            return OK, "pull of an unknown model: job error"
        return DEFECT, f"pull of an unknown model ended {end} ({status}): {ev}"

    # -- the run ----------------------------------------------------------------------------

    def run(self):
        a = self.args
        log(f"temp dir {self.tmp}")
        self.setup()
        self.end_at = time.time() + a.minutes * 60
        log(f"traffic for {a.minutes} min: {a.clients} client thread(s) + 1 model-management "
            f"thread; a node killed every {a.kill_every}s")
        t_traffic = time.time()
        workers = []
        for i in range(a.clients):
            workers.append(self.start_thread(self.traffic, f"traffic-{i}", a.seed * 100 + i))
        workers.append(self.start_thread(self.admin, "admin", a.seed * 100 + 99))
        killer = self.start_thread(self.killer, "killer") if a.kill_every > 0 else None
        last = time.time()
        while time.time() < self.end_at and not self.fatal.is_set():
            time.sleep(1)
            if time.time() - last >= 30:
                last = time.time()
                tot = collections.Counter()
                with self.lock:
                    for c in self.counts.values():
                        tot.update(c)
                rss = " ".join(f"{n}={n.max_rss / MIB:.0f}MiB" for n in self.nodes)
                log(f"{time.time() - t_traffic:.0f}s: " +
                    " ".join(f"{o}={tot[o]}" for o in OUTCOMES) +
                    f" kills={self.kills} max RSS {rss}")
        log("stopping traffic")
        self.stop.set()
        for t in workers:
            t.join(a.request_timeout * 3 + 30)
            if t.is_alive():
                self.record("shutdown", None, DEFECT, f"thread {t.name} still in a request")
        if killer:
            killer.join(200)
        self.traffic_secs = time.time() - t_traffic
        self.quiesce()
        self.terminate_nodes()
        self.rss_stop.set()
        self.scan_logs()
        self.verify()
        return self.summary()

    def quiesce(self):
        """Every node must end with nothing queued, generating or running."""
        deadline = time.time() + 30
        pending = {}
        while time.time() < deadline:
            pending = {}
            for n in self.nodes:
                busy = []
                try:
                    st, data, _ = http_req(n.api_port, "GET", "/health", timeout=10)
                    for m in json.loads(data).get("models", []):
                        ms = m.get("status") or {}
                        if ms.get("state") == "loaded" and (ms.get("queue") or ms.get("live")):
                            busy.append(f"{m.get('name')}: queue {ms.get('queue')} live "
                                        f"{ms.get('live')}")
                    st, data, _ = http_req(n.api_port, "GET", "/v1/jobs", timeout=10)
                    for j in json.loads(data).get("data", []):
                        if j.get("status") == "running":
                            busy.append(f"job {j.get('job_id')} ({j.get('operation')}) running, "
                                        f"events so far: {self.job_history(n, j)}")
                except (ConnErr, Hang, ValueError) as e:
                    busy.append(f"not answering: {e}")
                if busy:
                    pending[n] = busy
            if not pending:
                log("all nodes idle")
                return
            time.sleep(1)
        for n, busy in pending.items():
            self.record("idle_check", n, DEFECT,
                        "still busy 30s after traffic stopped: " + "; ".join(busy))

    def job_history(self, node, job):
        """A running job's events so far (a late subscriber gets the history first)."""
        seen = []
        try:
            s = Stream(node.api_port, "GET", f"/v1/jobs/{job.get('job_id')}/stream", timeout=2)
            try:
                for ev in self.job_events(s):
                    seen.append(ev.get("phase") or ev.get("type"))
            finally:
                s.close()
        except (ConnErr, Hang):
            pass
        return seen

    def terminate_nodes(self):
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if not n.proc:
                continue
            try:
                rc = n.proc.wait(40)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
                self.record("sigterm", n, DEFECT, f"{n} did not exit within 40s of SIGTERM")
                continue
            n.exit_codes.append(rc)
            if rc != 0:
                self.record("sigterm", n, DEFECT, f"{n} exited {rc} after SIGTERM")
        log("nodes stopped")

    def scan_logs(self):
        self.log_levels = {}
        for n in self.nodes:
            try:
                text = n.log_path.read_text(errors="replace")
            except OSError:
                continue
            lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
            levels = collections.Counter()
            for line in lines:
                m = re.match(r"\S+\s+(ERROR|WARN)\s+(\S+?):\s+(.*)", line)
                if m:
                    levels[m.group(1)] += 1
                    levels[(m.group(1), m.group(2), short(re.sub(r"[0-9a-f]{12,}|\d+", "#",
                                                             m.group(3)), 100))] += 1
            self.log_levels[n.name] = levels
            for i, line in enumerate(lines):
                if "panicked at" in line:
                    ctx = "\n".join(lines[max(0, i - 10): i + 20])
                    self.record("log_panic", n, DEFECT, f"panic in {n}'s log:\n{ctx}")

    def verify(self):
        self.verify_results = {}
        for n in self.nodes:
            out = self.cli(n, "models", "verify", timeout=600)
            text = (out.stdout + out.stderr).strip()
            ok_lines = sum(1 for line in out.stdout.splitlines() if line.startswith("ok "))
            self.verify_results[n.name] = (out.returncode == 0, ok_lines, text)

    def summary(self):
        a = self.args
        limit = a.memory_budget + a.rss_margin
        out = []
        p = out.append
        p("")
        p(f"rbee soak: {a.minutes} min of traffic ({self.traffic_secs:.0f}s), 3 nodes, "
          f"{a.clients} client thread(s) + 1 model-management thread, "
          f"budget {a.memory_budget / MIB:.0f} MiB/node, max_tokens ≤ {a.max_tokens}")
        p("")
        p(f"{'kind':<14} {'total':>6} {'ok':>6} {'clear_err':>9} {'node_down':>9} {'DEFECT':>6}")
        total = collections.Counter()
        kinds = list(KINDS) + sorted(k for k in self.counts if k not in KINDS)
        for k in kinds:
            c = self.counts.get(k, collections.Counter())
            if not c and k not in KINDS:
                continue
            total.update(c)
            p(f"{k:<14} {sum(c.values()):>6} {c[OK]:>6} {c[CLEAR]:>9} {c[DOWN]:>9} "
              f"{c[DEFECT]:>6}")
        p(f"{'all':<14} {sum(total.values()):>6} {total[OK]:>6} {total[CLEAR]:>9} "
          f"{total[DOWN]:>9} {total[DEFECT]:>6}")
        p("")
        p(f"greedy answers compared: {self.greedy_checks} over {len(self.greedy)} "
          "prompt/length pairs (same text on every node, streamed or not)")
        p(f"kills (SIGKILL): {self.kills}, restarts: {self.restarts}, every {a.kill_every}s, "
          f"down {a.down_secs}s each")
        notes = [(k, o, m, c) for (k, o), ms in self.notes.items() for m, c in ms.items()
                 if o == CLEAR]
        if notes:
            p("clear errors seen (count, kind; the first one in full):")
            for k, o, m, c in sorted(notes, key=lambda x: -x[3])[:12]:
                p(f"  {c:>4}  {k:<13} {self.first_note.get((k, o, m), m)}")
        p("")
        p(f"{'node':<8} {'starts':>6} {'max RSS':>10} {'(anon+file)':>13} {'at':>5} "
          f"{'limit':>10} {'RSS ok':>6}  verify")
        rss_ok_all, verify_ok_all = True, True
        for n in self.nodes:
            ok_rss = n.max_rss <= limit
            rss_ok_all &= ok_rss
            vok, vcount, vtext = self.verify_results.get(n.name, (False, 0, "not run"))
            verify_ok_all &= vok
            vdesc = f"clean ({vcount} models ok)" if vok else "FAILED"
            split = f"({n.max_rss_split[0] / MIB:.0f}+{n.max_rss_split[1] / MIB:.0f})"
            p(f"{n.name:<8} {n.starts:>6} {n.max_rss / MIB:>6.0f} MiB {split:>13} "
              f"{n.max_rss_at:>4.0f}s {limit / MIB:>6.0f} MiB {'yes' if ok_rss else 'NO':>6}  "
              f"{vdesc}")
        p(f"(limit = --memory-budget {a.memory_budget / MIB:.0f} MiB for models + "
          f"--rss-margin {a.rss_margin / MIB:.0f} MiB for the process itself: runtime, "
          "buffers, the mapped model file; RSS sampled every "
          f"{a.rss_interval:g}s, series in rss.csv)")
        p("node logs: " + ", ".join(
            f"{n}: {self.log_levels.get(n.name, {}).get('ERROR', 0)} ERROR / "
            f"{self.log_levels.get(n.name, {}).get('WARN', 0)} WARN lines" for n in self.nodes))
        common = collections.Counter()
        for levels in self.log_levels.values():
            common.update({k: v for k, v in levels.items() if isinstance(k, tuple)})
        for (lvl, target, msg), c in common.most_common(8):
            p(f"  {c:>4}  {lvl:<5} {target}: {msg}")
        for n in self.nodes:
            vok, _, vtext = self.verify_results.get(n.name, (False, 0, "not run"))
            if not vok:
                p(f"\n`models verify` on {n}:\n{vtext}")
        if self.defects:
            p(f"\nDEFECTS ({len(self.defects)}):")
            shown_logs = 0
            for d in self.defects[:25]:
                p(f"  [{d['t']:.0f}s] {d['kind']} on {d['node'] or '-'}: "
                  f"{short(d['detail'], 400)}")
                if d["node"] is not None and shown_logs < 6 and d["kind"] != "log_panic":
                    shown_logs += 1
                    p(f"    --- {d['node']} log around it ---")
                    p("    " + d["node"].log_tail(d["log_at"], 25).replace("\n", "\n    "))
            for d in self.defects:
                if d["kind"] == "log_panic":
                    p(f"\n{d['detail']}")
        if self.script_errors:
            p(f"\nSCRIPT ERRORS ({len(self.script_errors)}; bugs of scripts/soak.py):")
            for e in self.script_errors[:5]:
                p(e)
        passed = (not self.defects and not self.script_errors and rss_ok_all and verify_ok_all
                  and total[OK] > 0)
        p("")
        p(f"RESULT: {'PASS' if passed else 'FAIL'} — {len(self.defects)} defect(s), verify "
          f"{'clean' if verify_ok_all else 'FAILED'}, RSS "
          f"{'within' if rss_ok_all else 'OVER'} budget+margin")
        print("\n".join(out), flush=True)
        self.passed = passed
        return 0 if passed else 1

    def cleanup(self, keep):
        self.stop.set()
        self.rss_stop.set()
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()
        if keep:
            log(f"kept {self.tmp} (node logs node-*.log, rss.csv, data dirs)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def build(args):
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    binary = target / "release" / "rbee-node"
    if args.bin:
        return Path(args.bin).resolve()
    if not args.no_build:
        log("building rbee-node (release; the first build takes several minutes)")
        r = subprocess.run(["cargo", "build", "--release", "-p", "rbee-cli", "--bin",
                            "rbee-node"], cwd=ROOT)
        if r.returncode != 0:
            sys.exit("soak: cargo build --release failed")
    if not binary.is_file():
        sys.exit(f"soak: {binary} not found")
    return binary


def fetch_model(args):
    if args.model:
        return Path(args.model).resolve()
    r = subprocess.run(["bash", "-c", "scripts/fetch-demo-model | tail -1"], cwd=ROOT,
                       capture_output=True, text=True)
    path = Path(r.stdout.strip())
    if r.returncode != 0 or not path.is_file():
        sys.exit(f"soak: scripts/fetch-demo-model failed: {r.stderr.strip()[-2000:]}")
    return path


def main():
    ap = argparse.ArgumentParser(
        prog="scripts/soak", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5, help="traffic duration (default 5)")
    ap.add_argument("--kill-every", type=float, default=60,
                    help="seconds between SIGKILLs, rotating over the nodes; 0: none (60)")
    ap.add_argument("--down-secs", type=float, default=3,
                    help="how long a killed node stays down (default 3)")
    ap.add_argument("--memory-budget", type=parse_size, default=parse_size("700MiB"),
                    help="each node's --memory-budget (default 700MiB)")
    ap.add_argument("--rss-margin", type=parse_size, default=parse_size("300MiB"),
                    help="RSS allowed above the budget for the process itself (300MiB)")
    ap.add_argument("--rss-interval", type=float, default=1.0, help="RSS sampling, s (1)")
    ap.add_argument("--clients", type=int, default=2,
                    help="traffic threads, besides the one model-management thread (2)")
    ap.add_argument("--max-tokens", type=int, default=24,
                    help="largest max_tokens asked for (8..32; default 24)")
    ap.add_argument("--pause", type=float, default=0.5,
                    help="mean pause between one thread's requests, s (0.5)")
    ap.add_argument("--request-timeout", type=float, default=120,
                    help="a request with no answer for this long is a hang (120)")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--log-level", default="info", help="RUST_LOG for the nodes (info)")
    ap.add_argument("--model", help="the GGUF to use (default: scripts/fetch-demo-model)")
    ap.add_argument("--bin", help="an rbee-node binary to use instead of building one")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir even on success")
    args = ap.parse_args()
    args.max_tokens = max(8, min(32, args.max_tokens))
    args.pause = max(0.0, args.pause) * 2  # uniform(0, 2*mean)

    binary = build(args)
    model = fetch_model(args)
    log(f"binary {binary}, model {model}, seed {args.seed}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    soak = Soak(args, binary, model)
    rc, keep = 1, True
    try:
        rc = soak.run()
        keep = args.keep or rc != 0
    except KeyboardInterrupt:
        log("interrupted: stopping the nodes")
        rc, keep = 130, args.keep
    except SetupError as e:
        log(f"setup failed: {e}")
        for n in soak.nodes:
            log(f"--- {n} log tail ---\n{n.log_tail()}")
        rc = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.cleanup(keep)
    sys.exit(rc)


if __name__ == "__main__":
    main()
