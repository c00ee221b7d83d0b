"""``jupyter tt <command>``: devices, doctor, kernelspec, usage, release, run, scheduler, serve, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import TTSettings
from .errors import TTError
from .serving.backends import BACKENDS, DEFAULT_BACKEND, all_weight_formats
from .serving.engines import ENGINES
from .text import csv_cell, printable


def _scheduler():
    from .scheduler import open_scheduler

    return open_scheduler(TTSettings())


def _fmt(value, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def cmd_devices(args) -> int:
    from .scheduler import DeviceStatus

    scheduler = _scheduler()
    scheduler.reconcile()
    report = scheduler.report()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    p = printable  # users' labels and reasons, process names: shown, never interpreted by the terminal
    inv = report.inventory
    if report.simulated:
        print(f"Inventory: {p(inv['label'])}")
    else:
        where = [f"limited to {', '.join(inv['visible'])} (TTSettings.visible_devices)"] if inv.get("visible") else []
        where += ["in a container: the cards whose nodes it was given"] if inv.get("container") else []
        print(p(f"Inventory: sysfs under {inv['root']}" + "".join(f"; {w}" for w in where)))
    if scheduler.mode == "service":
        print(f"Scheduler: the host's service at {p(scheduler.state_dir)}")
    else:
        print(f"Scheduler: personal (only your kernels share these devices), state in {p(scheduler.state_dir)}")
    print(f"Enforcement: {p(report.scheduler.enforcement)}\n")
    pids = {lease.id: lease.pid for lease in report.leases}
    rows = []
    for state in report.devices:
        d, t = state.device, state.device.telemetry
        holder = ""
        if state.lease_id:
            kernel = f" kernel {state.kernel_id[:8]}" if state.kernel_id else ""
            holder = f"{state.user}{kernel} (pid {pids.get(state.lease_id) or None})"
        shown = state.state + (" (held outside)" if state.held_outside else "") + (" [sim]" if d.simulated else "")
        rows.append([
            d.id, d.card_type, d.bdf, "-" if d.numa_node is None else d.numa_node, shown, holder,
            _fmt(t.temperature_c, "°C"), _fmt(t.power_w, "W"), _fmt(t.aiclk_mhz, "", 0),
            d.firmware.get("fw_bundle", "-"),
        ])
    print(_table(p(rows), ["ID", "CARD", "BDF", "NUMA", "STATE", "HOLDER", "TEMP", "POWER", "AICLK", "FW"]))
    resetting = [state for state in report.devices if state.state == DeviceStatus.RESETTING and state.reset]
    if resetting:
        print("\nResetting (out of the pool until its firmware beats again):")
        for state in resetting:
            waits = f"; waits: {state.reset.waiting_for}" if state.reset.waiting_for else ""
            print(p(f"  device {state.id}: after {state.reset.reason}{waits}"))
    problems = [state.device for state in report.devices if state.device.problem]
    if problems:
        print("\nUnhealthy:")
        for d in problems:
            print(p(f"  device {d.id}: {d.problem}"))
    if report.queue:
        print("\nQueue:")
        for w in report.queue:
            waited = time.time() - w.since
            kept = f", {w.reserved} free kept for it" if w.reserved else ""
            print(p(f"  {w.position}. {w.user} wants {w.devices}× {w.card_type} "
                    f"(kernel {w.kernel_id or '-'}, waiting {waited:.0f} s{kept})"))
    held = [(state.id, process) for state in report.devices for process in state.unaccounted_processes]
    if held:
        why = ("opened while a lease of theirs held it, or by root" if report.scheduler.enforcing
               else "the scheduler coordinates kernels; here it cannot fence others")
        print(f"\nProcesses holding a device without a lease ({why}):")
        for device_id, process in held:
            what = f"pid {process.pid} {process.name or '?'}" if process.pid else (process.name or "a process (root sees which)")
            print(p(f"  device {device_id}: {what} (user {process.user or '?'})"))
    return 0


def cmd_kernelspec_install(args) -> int:
    from .kernels.kernelspec import GENERIC_DISPLAY_NAME, GENERIC_NAME, install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    if args.generic:
        args.name, args.devices, args.card_type = args.name or GENERIC_NAME, 0, "any"
        args.display_name = args.display_name or GENERIC_DISPLAY_NAME
    if not args.name:
        raise TTError("give the kernelspec a --name (e.g. tt-n300), or install the generic one with --generic")
    path = install(
        args.name, args.devices, args.card_type, wait_timeout=args.wait_timeout,
        display_name=args.display_name, user=args.user, prefix=prefix,
    )
    print(f"Installed kernelspec {args.name} in {path}")
    return 0


#: The columns of ``jupyter tt usage --csv``: one row per lease, times in UTC (ISO 8601).
USAGE_CSV_COLUMNS = ["lease_id", "user", "card_type", "devices", "chips", "granted_at", "ended_at", "end_reason",
                     "device_hours", "chip_hours"]


def cmd_usage(args) -> int:
    since = time.time() - args.days * 86400 if args.days else 0.0
    if args.csv:
        import csv
        from datetime import datetime, timezone

        def iso(t: float | None) -> str:
            return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t is not None else ""

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(USAGE_CSV_COLUMNS)
        for r in _scheduler().usage_records(since):  # page after page, each one bounded
            row = [r.lease_id, r.user, r.card_type, " ".join(map(str, r.devices)), r.chips, iso(r.granted_at),
                   iso(r.ended_at), r.end_reason or "", f"{r.device_hours:.6f}", f"{r.chip_hours:.6f}"]
            writer.writerow([csv_cell(printable(cell)) for cell in row])
        return 0
    usage = _scheduler().usage(since)
    if args.json:
        print(json.dumps([u.to_json() for u in usage], indent=2))
        return 0
    rows = [[printable(u.user), u.leases, f"{u.device_hours:.3f}", f"{u.chip_hours:.3f}"] for u in usage]
    print(_table(rows, ["USER", "LEASES", "DEVICE-HOURS", "CHIP-HOURS"]) if rows else "No leases recorded yet.")
    return 0


def cmd_cache(args) -> int:
    from .caches import GIB, Caches
    from .config import TTSettings
    from .text import printable

    caches = Caches.from_settings(TTSettings())
    if args.clear:
        removed = caches.clear()
        print(f"removed {len(removed)} entries ({sum(e.size for e in removed) / GIB:.1f} GiB) from {caches.root}")
        return 0
    entries = caches.entries()
    if args.json:
        print(json.dumps({"root": str(caches.root), "limit_bytes": caches.limit_bytes,
                          "entries": [e.to_json() for e in entries]}, indent=1))
        return 0
    bound = f"{caches.limit_bytes / GIB:g} GiB" if caches.limit_bytes else "no bound"
    print(f"{caches.root}: {sum(e.size for e in entries) / GIB:.2f} GiB in {len(entries)} entries ({bound}; "
          f"least recently used first)")
    rows = [[e.kind.value, e.key, f"{e.size / GIB:.2f}", time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)),
             "yes" if e.held else "", printable(json.dumps(e.about))[:80]] for e in entries]
    if rows:
        print(_table(rows, ["kind", "key", "GiB", "last used", "in use", "for"]))
    return 0


def cmd_reset(args) -> int:
    scheduler = _scheduler()
    if not scheduler.retry_reset(args.device):
        print(f"Device {args.device} waits for no reset.")
        return 0
    print(f"Device {args.device} will be reset again; `jupyter tt devices` shows when it is back.")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import Doctor, Status, render

    settings = TTSettings()
    if args.root:
        settings.sysfs_root = args.root
    checks = Doctor(settings, python=args.python, heartbeat_wait=args.heartbeat_wait).run()
    if args.json:
        print(json.dumps({"ok": not any(c.status is Status.FAIL for c in checks), "root": settings.sysfs_root,
                          "checks": [c.to_json() for c in checks]}, indent=2))
    else:
        print(render(checks))
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def cmd_check(args) -> int:
    from .check import check

    report = check()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


def cmd_release(args) -> int:
    scheduler = _scheduler()
    scheduler.release(args.lease_id, reason=f"released with `jupyter tt release` by {scheduler.user}", user=scheduler.user)
    print(f"Released {args.lease_id}")
    return 0


def cmd_run(args) -> int:
    from .run import run_with_devices

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise TTError("give the command after --, e.g. jupyter tt run --devices 1 -- python train.py")
    return run_with_devices(command, args.devices, args.card_type, timeout=args.timeout)


def cmd_scheduler(args) -> int:
    from .config import SERVICE_SOCKET, SERVICE_STATE_DIR

    if args.print_unit:
        print(systemd_unit(args.config))
        return 0
    if args.print_udev_rule:
        from importlib.resources import files

        print(files("jupyter_tt.scheduler").joinpath(UDEV_RULE).read_text(), end="")
        return 0
    from .scheduler.service import main, unfence

    socket_path = args.socket or SERVICE_SOCKET
    state_dir = args.state_dir or os.environ.get("JUPYTER_TT_STATE_DIR") or SERVICE_STATE_DIR
    if args.unfence:
        restored = unfence(socket_path, state_dir)
        print("\n".join(f"gave back {r}" for r in restored) or "no device node was fenced by the service")
        return 0
    return main(socket_path, state_dir, args.config)


#: The udev rule that keeps device nodes root-only from their creation (install in /etc/udev/rules.d/).
UDEV_RULE = "60-jupyter-tt.rules"


def systemd_unit(config: str | None) -> str:
    """The shipped unit (jupyter_tt/scheduler/jupyter-tt-scheduler.service) with this environment's command."""
    from importlib.resources import files

    template = files("jupyter_tt.scheduler").joinpath("jupyter-tt-scheduler.service").read_text()
    command = f"{sys.executable} -m jupyter_tt.cli scheduler" + (f" --config {config}" if config else "")
    return template.replace("@COMMAND@", command)


def cmd_serve(args) -> int:
    if args.engine != "builtin":
        return _exec_engine(args)
    try:
        from .serving.server import build_engine, serve_forever
    except ImportError as e:
        raise TTError(f"serving needs packages that are not installed ({e.name}): pip install 'jupyter-tt[serve]'") from e

    engine, name = build_engine(
        args.model, args.backend, weights=args.weights, max_num_seqs=args.max_num_seqs, kv_cache_mb=args.kv_cache_mb,
        ttnn_impl=args.ttnn_impl, step_timeout=args.step_timeout,
    )
    if args.parent_pid:
        _exit_with_parent(args.parent_pid, engine)
    api_key = args.api_key or os.environ.get("JUPYTER_TT_API_KEY") or None
    serve_forever(engine, args.served_model_name or name, args.host, args.port, args.backend, api_key=api_key,
                  listen_fd=args.listen_fd)
    return 0


def _exec_engine(args) -> int:
    """``jupyter tt serve --engine llama.cpp|vllm``, with the same key handling (the key in the engine's
    environment, off its command line). llama.cpp starts in a second: this process becomes it. vLLM takes
    minutes: this process stays in front of it, showing its start as a checklist (``startup.supervise``)."""
    from jupyter_core.paths import jupyter_runtime_dir

    from .files import private_dir
    from .serving.engines import EngineName, engine_name, external_launch
    from .serving.notebook import hold_cache, start_timeout
    from .serving.startup import supervise

    engine_args = args.engine_args[1:] if args.engine_args[:1] == ["--"] else args.engine_args
    api_key = args.api_key or os.environ.get("JUPYTER_TT_API_KEY") or ""
    name = engine_name(args.engine)
    launch = external_launch(name, args.model, args.backend, args.port, api_key, engine_args,
                             served_name=args.served_model_name)
    command = [part if part != "127.0.0.1" else args.host for part in launch.command]
    env = {**os.environ, **({k: v for k, v in launch.env.items() if v})}
    if name is EngineName.LLAMA_CPP:
        sys.stdout.flush()
        os.execve(command[0], command, env)
    timeout = start_timeout(None, launch.startup_timeout)
    env["VLLM_ENGINE_READY_TIMEOUT_S"] = str(int(timeout))
    runtime = private_dir(jupyter_runtime_dir(), "Jupyter's runtime folder", setting="JUPYTER_RUNTIME_DIR")
    hold = hold_cache(launch)
    label = name.value + (f" on {launch.env['MESH_DEVICE']}" if launch.env.get("MESH_DEVICE") else "")
    try:
        return supervise(command, env, url=f"http://{args.host}:{args.port}/v1/models",
                         headers={"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout=timeout,
                         log_path=str(runtime / f"jupyter-tt-serve-{args.port}.log"), label=label)
    finally:
        if hold is not None:
            hold.close()


def _numbers(text: str, kind=int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TTError(f"expected a comma-separated list of numbers, such as 1,2,4, not {text!r}") from None


def _slo(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    slo = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        if key.strip() not in ("ttft", "tpot", "e2el") or not value:
            raise TTError(f"--goodput takes ttft:MS,tpot:MS,e2el:MS (any of them), not {text!r}")
        slo[key.strip()] = float(value)
    return slo


def _ramp(args) -> tuple[str, float, float] | None:
    if not args.ramp_up_strategy:
        return None
    if not (args.ramp_up_start_rps and args.ramp_up_end_rps and args.ramp_up_start_rps > 0 and args.ramp_up_end_rps > 0):
        raise TTError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps, both above 0")
    return args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps


def cmd_bench(args) -> int:
    from .bench import report
    from .bench.scenarios import SCENARIOS, Bench, format_recommendation, format_run

    if args.compare:  # saved results side by side; nothing is measured
        results = {Path(p).stem: report.load(p) for p in args.compare}
        print(report.compare(results))
        if args.html:
            report.write_html(results, args.html)
            print(f"wrote {args.html}", file=sys.stderr)
        if args.plots:
            for path in report.plot(results, args.plots):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    from .bench.scenarios import bench_tokenizer

    tokenizer = bench_tokenizer(args.tokenizer or args.model)
    bench = Bench(args.base_url, args.model, tokenizer, seed=args.seed, num_prompts=args.num_prompts,
                  request_rate=args.request_rate, burstiness=args.burstiness, slo_ms=_slo(args.goodput),
                  ramp=_ramp(args), api_key=os.environ.get("OPENAI_API_KEY") or None,
                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    recommendation = []
    try:
        if args.scenario in SCENARIOS:
            recommendation = bench.scenario(SCENARIOS[args.scenario], args.scale, search=args.search)
        elif args.scenario == "all":
            for scenario in SCENARIOS.values():
                recommendation += bench.scenario(scenario, args.scale, search=args.search)
        else:  # a custom run or sweep: concurrency x ISL x OSL
            for c in _numbers(args.concurrency):
                for isl in _numbers(args.input_len):
                    for osl in _numbers(args.output_len):
                        bench.run(c, isl, osl)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs that finished", file=sys.stderr)
    for run in bench.runs:
        print(format_run(run))
    if recommendation:
        print(format_recommendation(recommendation))
    result = {"date": time.strftime("%Y%m%d-%H%M%S"), "base_url": args.base_url, "model_id": args.model,
              "tokenizer_id": args.tokenizer or args.model, "scenario": args.scenario, "scale": args.scale,
              "runs": bench.runs, "recommendation": recommendation}
    if len(bench.runs) == 1:
        result = {**bench.runs[0], **result}  # one run: its fields at the top, as vllm bench serve writes them
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.csv:
        report.write_csv(bench.runs, args.csv)
        print(f"wrote {args.csv} and its .requests.csv", file=sys.stderr)
    if args.html:
        report.write_html({args.model: {"runs": bench.runs}}, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.plots:
        for path in report.plot({args.model: {"runs": bench.runs}}, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if bench.runs and all(r["completed"] for r in bench.runs) else 1


def _exit_with_parent(pid: int, engine) -> None:
    """Stop serving when process ``pid`` (the kernel that started us) is gone."""
    import threading

    import psutil

    def watch():
        while psutil.pid_exists(pid) and os.getppid() == pid:
            time.sleep(1.0)
        engine.stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jupyter tt", description="Tenstorrent devices for Jupyter kernels.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="the inventory, who holds what, and the queue")
    d.add_argument("--json", action="store_true", help="print the devices API document")
    d.set_defaults(func=cmd_devices)

    k = sub.add_parser("kernelspec", help="install kernelspecs that ask for devices")
    ksub = k.add_subparsers(dest="kernelspec_command", required=True)
    ki = ksub.add_parser("install", help="write a kernelspec using tt-provisioner")
    ki.add_argument("--name", default=None, help="kernelspec name, e.g. tt-n300 (with --generic: tenstorrent)")
    ki.add_argument("--generic", action="store_true",
                    help="the 'Tenstorrent' kernelspec: starts on no device, the user picks them in JupyterLab")
    ki.add_argument("--devices", type=int, default=1, help="how many devices (cards); 0 for none")
    ki.add_argument("--card-type", default="any", help="n150, n300 or any")
    ki.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait in the queue")
    ki.add_argument("--display-name", default=None)
    where = ki.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", default=None, help="install under this prefix")
    ki.set_defaults(func=cmd_kernelspec_install)

    u = sub.add_parser("usage", help="device-hours per user, from the lease history")
    u.add_argument("--days", type=float, default=0, help="only the last N days (default: all)")
    shape = u.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the totals per user as JSON")
    shape.add_argument("--csv", action="store_true",
                       help="one row per lease (held ones too, with an empty ended_at), for billing or reports: "
                            + ", ".join(USAGE_CSV_COLUMNS))
    u.set_defaults(func=cmd_usage)

    c = sub.add_parser("cache", help="this user's caches of compiled kernels and converted weights, and their bound")
    c.add_argument("--json", action="store_true", help="the entries as JSON")
    c.add_argument("--clear", action="store_true", help="remove every entry no process uses")
    c.set_defaults(func=cmd_cache)

    r = sub.add_parser("reset", help="reset again a card whose reset after a crash failed (root on a shared host)")
    r.add_argument("device", type=int, help="the device number, N of /dev/tenstorrent/N")
    r.set_defaults(func=cmd_reset)

    doc = sub.add_parser("doctor", help="check this card host: driver, device nodes, hugepages, memlock, ttnn, SFPI, "
                                        "reset tool, scheduler service, heartbeats (exit 1 if a check fails)")
    doc.add_argument("--python", default=sys.executable,
                     help="the kernels' Python, where ttnn must import (default: this one)")
    doc.add_argument("--root", default=None, help="read the host's files under this root (default: TTSettings.sysfs_root, /)")
    doc.add_argument("--heartbeat-wait", type=float, default=2.0, help="seconds to watch the firmware heartbeats")
    doc.add_argument("--json", action="store_true", help="the checks as JSON, for scripts")
    doc.set_defaults(func=cmd_doctor)

    chk = sub.add_parser("check", help="is this lease's card ready? A gated MLP at a prefill and a decode shape, traced, "
                                       "against torch (PCC >= 0.99, replays identical); this lease only, never a "
                                       "reset (exit 1 if it fails). Run it in a kernel, or under `jupyter tt run`")
    chk.add_argument("--json", action="store_true", help="the results as JSON, for scripts")
    chk.set_defaults(func=cmd_check)

    s = sub.add_parser("serve", help="serve a model with an OpenAI-compatible API")
    s.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name, .gguf file or Hugging Face folder")
    s.add_argument("--engine", default="builtin", choices=ENGINES,
                   help="builtin: jupyter-tt's engine (--backend picks its runner); llama.cpp: llama.cpp's llama-server "
                        "on the GGUF file (JUPYTER_TT_LLAMA_SERVER or PATH); vllm: vLLM (JUPYTER_TT_VLLM_PYTHON), on the "
                        "CPU or with --backend ttnn on the lease's devices. An external engine takes this process's "
                        "place; arguments after -- go to it as they are")
    s.add_argument("--backend", default=DEFAULT_BACKEND, choices=list(BACKENDS),
                   help="; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values()))
    s.add_argument("--ttnn-impl", default=None, choices=BACKENDS["ttnn"].implementations,
                   help="the ttnn model: ours (jupyter-tt, the default), or tt-metal's models.tt_transformers where it is importable")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--weights", default=None, choices=all_weight_formats(),
                   help="weight format, the backend's first by default: " + "; ".join(
                       f"{b.name} {', '.join(b.weight_formats)}" for b in BACKENDS.values()))
    s.add_argument("--max-num-seqs", type=int, default=16, help="most requests in the running batch")
    s.add_argument("--kv-cache-mb", type=int, default=256, help="KV cache memory")
    s.add_argument("--step-timeout", type=float, default=120.0,
                   help="seconds one engine step may take before the server counts the engine as stuck: its waiting "
                        "requests then get 503 and /health says why (default: %(default)s)")
    s.add_argument("--served-model-name", default=None, help="the name clients use (default: the model's)")
    s.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY on /v1 (as vLLM's --api-key); JUPYTER_TT_API_KEY does the same "
                        "without showing the key in ps. Without one, any local user can use the server")
    s.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # jupyter_tt.serve(): exit with the kernel
    s.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # serve(): a socket it bound and listens on
    s.add_argument("engine_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # after --: an external engine's
    s.set_defaults(func=cmd_serve)

    sch = sub.add_parser("scheduler", help="run the host-wide scheduler service (as root or a dedicated user)")
    sch.add_argument("--socket", default=None, help="the Unix socket to serve (default /run/jupyter-tt/scheduler.sock)")
    sch.add_argument("--state-dir", default=None, help="the service's own state folder (default /var/lib/jupyter-tt)")
    sch.add_argument("--config", default=None, help="a traitlets config file (.py or .json): TTSettings quotas, inventory")
    sch.add_argument("--print-unit", action="store_true", help="print the systemd unit that runs this service, and exit")
    sch.add_argument("--print-udev-rule", action="store_true",
                     help=f"print the udev rule ({UDEV_RULE}) that keeps device nodes root-only from boot, and exit")
    sch.add_argument("--unfence", action="store_true",
                     help="give the device nodes back the owners and modes they had before the service (for uninstalling; "
                          "the service must be stopped), and exit")
    sch.set_defaults(func=cmd_scheduler)

    run = sub.add_parser("run", help="lease devices for a command (a script, a terminal) while it runs",
                         usage="jupyter tt run [--devices N] [--card-type T] [--timeout S] -- CMD [ARG ...]")
    run.add_argument("--devices", type=int, default=1, help="how many devices (cards), default 1")
    run.add_argument("--card-type", default="any", help="n150, n300 or any (default)")
    run.add_argument("--timeout", type=float, default=None, help="seconds to wait in the queue (default: as long as it takes)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    run.set_defaults(func=cmd_run)

    r = sub.add_parser("release", help="end one of your leases (e.g. one whose server is gone)")
    r.add_argument("lease_id")
    r.set_defaults(func=cmd_release)
    b = sub.add_parser("bench", help="benchmark an OpenAI-compatible endpoint (vllm bench serve's metrics)")
    b.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="the server, without /v1 (its key, if it wants one, from OPENAI_API_KEY as for vllm bench serve)")
    b.add_argument("--model", default="smollm2-135m-instruct", help="the served model's name")
    b.add_argument("--tokenizer", default=None, help="tokenizer for exact prompt lengths (default: --model)")
    b.add_argument("--scenario", default="custom", choices=["chat", "rag", "long", "all", "sweep", "custom"],
                   help="a use case of the published table, all of them, or a sweep of the lists below")
    b.add_argument("--input-len", default="128", help="prompt tokens; a list sweeps (custom/sweep)")
    b.add_argument("--output-len", default="64", help="output tokens; a list sweeps (custom/sweep)")
    b.add_argument("--concurrency", default="1", help="most requests in flight; a list sweeps, e.g. 1,2,4")
    b.add_argument("--num-prompts", type=int, default=None, help="requests per run (default: 4 x concurrency, at least 8)")
    b.add_argument("--request-rate", type=float, default=float("inf"), help="open-loop arrivals per second (default: all at once)")
    b.add_argument("--burstiness", type=float, default=1.0, help="1: Poisson arrivals; below 1 burstier, above steadier")
    b.add_argument("--ramp-up-strategy", choices=["linear", "exponential"], default=None,
                   help="raise the request rate over each run, from --ramp-up-start-rps to --ramp-up-end-rps")
    b.add_argument("--ramp-up-start-rps", type=float, default=None)
    b.add_argument("--ramp-up-end-rps", type=float, default=None)
    b.add_argument("--goodput", default=None, help="SLOs for goodput, e.g. ttft:300,tpot:50 (ms)")
    b.add_argument("--scale", type=float, default=1.0, help="shrink scenario lengths (e.g. 0.125 for small models on CPUs)")
    b.add_argument("--search", action="store_true", help="search the largest concurrency that meets each scenario's SLO")
    b.add_argument("--seed", type=int, default=None, help="prompt seed (default: a new one per run)")
    b.add_argument("--output", default=None, help="write the result JSON here")
    b.add_argument("--csv", default=None, help="write a CSV (a row per run) and FILE.requests.csv (a row per request)")
    b.add_argument("--html", default=None, metavar="FILE", help="write an interactive page: charts with tooltips, the table")
    b.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots here (needs matplotlib)")
    b.add_argument("--compare", nargs="+", default=None, metavar="RESULT.json",
                   help="show saved results side by side (and plot them with --plots) instead of measuring")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TTError as e:
        print(f"jupyter tt {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
