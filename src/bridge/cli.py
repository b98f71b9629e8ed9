"""The `mccp-bridge` command line: `serve`, `extension add|list|remove`, `cert`.

Every setting of `bridge.config.SETTINGS` is a `serve` flag (`--wss-port`), an environment variable
(`MCCP_BRIDGE_WSS_PORT`) and a key in config.toml. A bad flag or value is one line on stderr and exit
status 2. `serve` on a data dir without config.toml is a first start: it writes a commented config.toml
and two demo extensions (100, 101) with random passwords, then prints a ready-to-click URL.

`serve` with more than one worker (`--workers N`, default one per CPU core) runs the supervisor of
`bridge.workers`, which starts `serve` again N times with the internal flags `--worker-index` and
`--worker-control` (not in --help); `--workers 1` serves in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO
from urllib.parse import urlencode

from bridge.certs import CertError, cert_paths, check_pair, ensure_certificate, host_names
from bridge.config import (
    CONFIG_FILE_NAME,
    SETTINGS,
    Config,
    ConfigError,
    default_config_text,
    default_value_text,
    extension_number,
    load_config,
)
from bridge.extensions import (
    ExtensionsError,
    check_new_password,
    demo_extensions,
    load_extensions,
    make_extension,
    random_password,
    save_extensions,
)
from bridge.logs import setup_logging

if TYPE_CHECKING:
    from bridge.app import BridgeContext

PROG = "mccp-bridge"
EXIT_USAGE = 2
# Options every subcommand (and the top level) accepts, besides those of its own.
COMMON_KEYS = ("data_dir", "log_level")


class UsageError(Exception):
    """A bad command line; `str()` is the one-line message."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`mccp-bridge: error: ...`) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


class _VersionAction(argparse.Action):
    """`--version`, looking the version up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:

        from importlib import metadata

        try:
            version = metadata.version("mccp-bridge")
        except metadata.PackageNotFoundError:
            version = "unknown"
        parser._print_message(f"{PROG} {version}\n", sys.stdout)
        parser.exit()


def _settings_epilog() -> str:
    lines = [
        "settings (flag / environment variable / config.toml key, default):",
    ]
    for setting in SETTINGS:
        default = default_value_text(setting.key)
        lines.append(f"  {setting.flag:<24} {setting.env:<36} {setting.key} = {default}")
        lines.append(f"      {setting.help}")
    lines += [
        "",
        "Precedence: defaults < config file < environment < flags. The config file is --config FILE,",
        f"else $MCCP_BRIDGE_CONFIG, else <data dir>/{CONFIG_FILE_NAME}. Extensions are kept in",
        "<data dir>/extensions.toml (passwords hashed); the TLS certificate in <data dir>/wrtcCert/.",
        "serve: SIGHUP reloads extensions and certificate; SIGTERM/SIGINT stop gracefully (twice: at once).",
        "With --workers N > 1 these signals go to the supervisor, which passes them to every worker.",
        "Registrations to the embedded registrar are kept in <data dir>/bindings.json (they survive a",
        "restart; with several workers, worker 0 answers REGISTER on sip_port and the others read it).",
    ]
    return "\n".join(lines)


def _add_setting(parser: argparse.ArgumentParser, key: str) -> None:
    setting = next(s for s in SETTINGS if s.key == key)
    parser.add_argument(
        setting.flag,
        dest=f"setting_{key}",
        metavar=setting.metavar,
        default=argparse.SUPPRESS,
        help=f"{setting.help} [{setting.env}, default {default_value_text(key)}]",
    )


def _add_common(parser: argparse.ArgumentParser, *, extra: Sequence[str] = ()) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file [MCCP_BRIDGE_CONFIG, default <data dir>/{CONFIG_FILE_NAME}]",
    )
    for key in (*COMMON_KEYS, *extra):
        _add_setting(parser, key)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `mccp-bridge` (help text is generated from `bridge.config.SETTINGS`)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="WebRTC-to-SIP media bridge: a browser page speaks MCCP over WSS, the bridge places "
        "SIP calls and relays DTLS-SRTP <-> RTP.",
        epilog=_settings_epilog(),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the bridge",
        description="Run the bridge: HTTPS page + WSS (MCCP), SIP, media. On first start (no config.toml) "
        "writes a config and demo extensions 100 and 101 and prints a URL to try it.",
        epilog=_settings_epilog(),
        formatter_class=formatter,
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file [MCCP_BRIDGE_CONFIG, default <data dir>/{CONFIG_FILE_NAME}]",
    )
    for setting in SETTINGS:
        _add_setting(serve, setting.key)
    # Internal: how the supervisor starts worker I (bridge.workers); not for users.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-control", type=int, default=None, help=argparse.SUPPRESS)

    ext = sub.add_parser("extension", help="manage extensions (numbers and passwords)")
    ext_sub = ext.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ext_sub.required = True
    add = ext_sub.add_parser("add", help="add or replace an extension")
    add.add_argument("number", help="the extension number (digits, letters, *#+._-)")
    add.add_argument("--password", metavar="PW", help="its password (default: a random one, printed once)")
    _add_common(add, extra=("realm",))
    lst = ext_sub.add_parser("list", help="list extensions (no secrets shown)")
    _add_common(lst)
    rm = ext_sub.add_parser("remove", help="remove an extension")
    rm.add_argument("number", help="the extension number")
    _add_common(rm)
    _add_common(ext)

    cert = sub.add_parser(
        "cert",
        help="create the self-signed TLS certificate (or check the one there)",
        description="Create <data dir>/wrtcCert/server.crt and server.key (self-signed ECDSA P-256) if "
        "missing, or check the existing pair. To use a real certificate, put its PEM chain in "
        "server.crt and its key in server.key.",
    )
    cert.add_argument("--force", action="store_true", help="replace an existing certificate")
    _add_common(cert, extra=("public_address",))
    return parser


@dataclass(frozen=True, slots=True)
class FirstStart:
    """What a first start created: the files, and the demo passwords (printed once, never logged)."""

    config_file: Path
    extensions_file: Path | None
    passwords: Mapping[str, str] = field(repr=False)


def _load(args: argparse.Namespace, env: Mapping[str, str], home: Path) -> Config:
    flags = {
        name.removeprefix("setting_"): value
        for name, value in vars(args).items()
        if name.startswith("setting_")
    }
    config_path = getattr(args, "config", None)
    return load_config(
        flags=flags, env=env, config_path=Path(config_path) if config_path else None, home=home
    )


def first_start(config: Config) -> FirstStart | None:
    """On a data dir without a config file: write config.toml and, if none, demo extensions 100/101."""
    if config.config_file is not None:
        return None
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_file = config.data_dir / CONFIG_FILE_NAME
    config_file.write_text(default_config_text())
    if config.extensions_file.exists():
        return FirstStart(config_file, None, {})
    table, passwords = demo_extensions(config.realm)
    save_extensions(config.extensions_file, table)
    return FirstStart(config_file, config.extensions_file, passwords)


def _url_host(config: Config) -> str:
    if config.public_address:
        return config.public_address
    if config.listen not in ("0.0.0.0", "::"):
        return config.listen
    return "127.0.0.1"


def welcome_text(config: Config, first: FirstStart, wss_port: int) -> str:
    """The first-start message: files written, a ready-to-click URL, and the phone's credentials."""
    host = _url_host(config)
    hostport = f"[{host}]:{wss_port}" if ":" in host else f"{host}:{wss_port}"
    lines = [f"{PROG}: first start: wrote {first.config_file}"]
    if first.extensions_file is None:
        lines.append(f"  (kept the existing {config.extensions_file})")
        return "\n".join(lines) + "\n"
    lines.append(f"{PROG}: demo extensions 100 and 101 in {first.extensions_file} (passwords shown only now)")
    if "100" in first.passwords:
        query = urlencode(
            {"server": hostport, "clr": "100", "pwd": first.passwords["100"], "cld": config.echo_extension},
            safe=":",
        )
        lines.append(
            f"Call the echo extension {config.echo_extension} as 100 (accept the self-signed certificate):"
        )
        lines.append(f"  https://{hostport}/lite.html?{query}")
    if "101" in first.passwords:
        lines.append(
            f"SIP phone for 101: user 101, password {first.passwords['101']}, realm {config.realm}, "
            f"registrar sip:{host}:{config.sip_port}"
        )
    return "\n".join(lines) + "\n"


def _setup_logging(config: Config, stderr: TextIO, label: str | None = None) -> bool:
    """`bridge.logs.setup_logging`; False (the reason on stderr) when the log file cannot be opened."""
    try:
        setup_logging(config, stderr, label)
    except OSError as exc:
        stderr.write(f"{PROG}: cannot open the log file: {exc}\n")
        return False
    return True


def _raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard one: a call holds about 5 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("bridge.cli").warning("open files: cannot raise the limit of %d: %s", soft, exc)
        else:
            logging.getLogger("bridge.cli").info("open files: limit raised from %d to %d", soft, hard)


def _cmd_serve(
    config: Config, args: argparse.Namespace, argv: Sequence[str], stdout: TextIO, stderr: TextIO
) -> int:
    if args.worker_index is not None:
        return _serve_worker(config, args, stderr)
    count = config.worker_count
    if count > 1:
        return _supervise(config, argv, count, stdout, stderr)
    if not _setup_logging(config, stderr):
        return 1
    _raise_open_files_limit()
    first = first_start(config)
    if first is not None:
        logging.getLogger("bridge.cli").info("first start: wrote %s", first.config_file)
        config = dataclasses.replace(config, config_file=first.config_file)
    # Imported here: trio, TLS and the MCCP server are only needed to serve (the other commands start faster).
    from bridge.app import serve_blocking
    from bridge.services import bridge_services

    def started(context: BridgeContext) -> None:
        _settle_collector()
        if first is not None and context.wss_addresses:
            stdout.write(welcome_text(config, first, context.wss_addresses[0][1]))
            stdout.flush()

    status, message = _serve(lambda: serve_blocking(config, on_started=started, services=bridge_services))
    if message:
        stderr.write(f"{PROG}: {message}\n")
    return status


GC_YOUNG_THRESHOLD = 50_000  # tracked allocations between young collections (CPython's default: 700)


def _settle_collector() -> None:
    """Python's cyclic collector, for a process that serves many long calls (bench/README.md, GC).

    Everything built until the bridge is up (modules, classes, the services) lives as long as the
    process: `gc.freeze()` takes it out of every later collection, so a full collection walks the
    calls' objects only. A larger young-generation threshold lets most of one call set-up's
    objects (short-lived) die before they are promoted, so full collections come less often.
    (bench.relay --gc-mode probe, 500 calls set up and relayed: longest pause 213 -> 39-63 ms,
    collection time 1.17 -> 0.35 s; full collections 4 -> 2, the longest 213 -> 39 ms.)
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _serve(run: Callable[[], None]) -> tuple[int, str | None]:
    """Run the bridge; (exit status, the one-line error or None)."""
    from bridge.app import StartupError

    result: tuple[int, str | None] = (0, None)
    try:
        run()
    except* StartupError as group:
        result = (EXIT_USAGE, str(_first(group)))
    except* OSError as group:
        result = (1, f"cannot serve: {_first(group)}")
    except* KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        result = (130, None)
    return result


def _serve_worker(config: Config, args: argparse.Namespace, stderr: TextIO) -> int:
    """Worker `--worker-index I` of `--workers N`; a start failure goes to the supervisor as one line."""
    from bridge.app import serve_blocking
    from bridge.services import bridge_services
    from bridge.workers import WorkerSlot

    worker = WorkerSlot(args.worker_index, config.worker_count, args.worker_control)
    if not _setup_logging(config, stderr, worker.label):
        return 1
    _raise_open_files_limit()
    status, message = _serve(
        lambda: serve_blocking(
            config, on_started=lambda _: _settle_collector(), services=bridge_services, worker=worker
        )
    )
    if message:
        if worker.control_fd is None:
            stderr.write(f"{PROG}: {worker.label}: {message}\n")
        else:
            try:
                os.write(worker.control_fd, f"error {status} {message}\n".encode())
            except OSError:
                stderr.write(f"{PROG}: {worker.label}: {message}\n")
    return status


def _supervise(config: Config, argv: Sequence[str], count: int, stdout: TextIO, stderr: TextIO) -> int:
    """Check what every worker needs, then run `count` of them (`bridge.workers.supervise`)."""
    from bridge.workers import StartFailed, reserve_port, split_port_range, supervise, worker_sip_port

    if not _setup_logging(config, stderr, "supervisor"):
        return 1
    try:
        split_port_range(*config.rtp_ports, count)
        worker_sip_port(config.sip_port, count - 1)
    except ValueError as exc:
        stderr.write(f"{PROG}: config error: workers: {exc}\n")
        return EXIT_USAGE
    first = first_start(config)
    if first is not None:
        logging.getLogger("bridge.cli").info("first start: wrote %s", first.config_file)
    # One certificate for all, made here: N workers must not race to create it.
    cert_file, key_file = cert_paths(config.cert_dir)
    now = dt.datetime.now(dt.UTC)
    ensure_certificate(config.cert_dir, host_names(config.public_address), now=now)
    check_pair(cert_file, key_file, now=now)
    worker_argv = list(argv)
    reserved = None
    if config.wss_port == 0:  # every worker must bind the same port: choose it now
        reserved = reserve_port(config.listen)
        worker_argv += ["--wss-port", str(reserved.getsockname()[1])]
    wss_port = reserved.getsockname()[1] if reserved is not None else config.wss_port
    browser = config.rtp_browser_port
    logging.getLogger("bridge.cli").info(
        "starting %d workers: WSS port %d shared, SIP ports %s, media %d-%d split in %d%s",
        count,
        wss_port,
        "any free ones" if config.sip_port == 0 else f"{config.sip_port}-{config.sip_port + count - 1}",
        *config.rtp_ports,
        count,
        f", browser media on UDP {browser}-{browser + count - 1} (single port per worker)" if browser else "",
    )

    def ready() -> None:
        if first is not None:
            stdout.write(welcome_text(config, first, wss_port))
            stdout.flush()

    try:
        return supervise(worker_argv, count=count, grace=config.shutdown_grace, on_ready=ready)
    except StartFailed as exc:
        stderr.write(f"{PROG}: {exc}\n")
        return exc.status
    finally:
        if reserved is not None:
            reserved.close()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _cmd_extension(args: argparse.Namespace, config: Config, stdout: TextIO) -> int:
    path = config.extensions_file
    table = load_extensions(path)
    match args.action:
        case "add":
            try:
                number = extension_number(args.number)
            except ValueError as exc:
                raise ExtensionsError("NUMBER", str(exc), "command line") from None
            generated = args.password is None
            password = random_password() if generated else check_new_password(args.password)
            existed = number in table
            save_extensions(path, table.with_extension(make_extension(number, password, realm=config.realm)))
            stdout.write(f"extension {number} {'updated' if existed else 'added'} in {path}\n")
            if generated:
                stdout.write(f"password for {number}: {password}\n")
            stdout.write("a running `mccp-bridge serve` picks it up on SIGHUP\n")
        case "list":
            if not len(table):
                stdout.write(f"no extensions in {path}\n")
            for entry in table:
                stdout.write(f"{entry.number}\trealm={entry.realm}\n")
        case "remove":
            save_extensions(path, table.without(args.number))
            stdout.write(f"extension {args.number} removed from {path}\n")
        case _:
            raise UsageError(f"unknown extension action {args.action!r}")
    return 0


def _cmd_cert(args: argparse.Namespace, config: Config, stdout: TextIO) -> int:
    now = dt.datetime.now(dt.UTC)
    cert_file, key_file = cert_paths(config.cert_dir)
    exists = cert_file.exists() or key_file.exists()
    if exists and not args.force:
        info = check_pair(cert_file, key_file, now=now)
        stdout.write(
            f"certificate {cert_file} is valid until {info.not_after:%Y-%m-%d} UTC (use --force to replace)\n"
        )
    else:
        info, _ = ensure_certificate(config.cert_dir, host_names(config.public_address), now=now, force=True)
        stdout.write(f"created a self-signed certificate {cert_file} for {', '.join(info.names)}\n")
    stdout.write(f"SHA-256 fingerprint {info.fingerprint}\n")
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run `mccp-bridge`; returns the exit status (0 ok, 1 runtime failure, 2 bad usage or config)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    parser = build_parser()
    try:
        argv_list = sys.argv[1:] if argv is None else list(argv)
        try:
            args = parser.parse_args(argv_list)
        except SystemExit as exit_:  # --help, --version
            return exit_.code if isinstance(exit_.code, int) else 0
        config = _load(args, env, home)
        match args.command:
            case "serve":
                return _cmd_serve(config, args, argv_list, stdout, stderr)
            case "extension":
                return _cmd_extension(args, config, stdout)
            case "cert":
                return _cmd_cert(args, config, stdout)
            case _:
                raise UsageError(f"unknown command {args.command!r}")
    except UsageError as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
    except ConfigError as exc:
        stderr.write(f"{PROG}: config error: {exc}\n")
    except CertError as exc:
        stderr.write(f"{PROG}: certificate error: {exc}\n")
    except OSError as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return EXIT_USAGE
