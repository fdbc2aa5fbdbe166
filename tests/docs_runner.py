"""Run the guides' fenced code blocks as a new user would: in order, literally, in a fresh project.

A guide's blocks are read from its Markdown:

* ```` ```bash ```` blocks are commands. Each line (``\\``-continued lines joined) runs with ``bash -c`` in the
  project folder, with the project's virtual environment first on ``PATH`` (as after
  ``source .venv/bin/activate``); it must exit 0 and print no traceback.
* ```` ```yaml ```` (or any) blocks after an ``<!-- file: NAME -->`` line are files the guide tells the user to
  write: the runner writes them to ``NAME`` before the next command.
* ```` ```python ```` blocks run as one script per guide section marker (``<!-- example: NAME -->``), blocks of
  the same marker concatenated in order, as the guide says they continue each other.

Commands that start a server (``mlflow ui``, ``mlflow models serve``, ``optuna-dashboard``) are started in the
background as a user starts them in another terminal: the runner waits until the port answers HTTP, runs
the rest of the block against it and stops it at the block's end.

Placeholders: ``<time>`` in a path stands for the timestamp of the folder a search printed; the runner puts
in the newest folder that matches, as a user pastes what the last search printed. No other ``<...>`` is
allowed in a command.

A command that cannot run here is listed in the caller's ``skip`` table with its reason (a cloud account, a
download from outside the package registries); a table entry that no guide holds any more is an error, so
the table never hides a command that changed.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fixed_ports import holding_port

FENCE = re.compile(r"^```(\w*)\s*$")
FILE_MARKER = re.compile(r"^<!-- file: (\S+) -->$")
EXAMPLE_MARKER = re.compile(r"^<!-- example: (\S+) -->$")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
#: Commands that serve until stopped, and the port each uses when the command names none.
SERVERS = {("mlflow", "ui"): 5000, ("mlflow", "server"): 5000, ("mlflow", "models"): 5000, ("optuna-dashboard",): 8080}


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    file: str | None = None  # <!-- file: NAME -->: the user writes this block to NAME
    example: str | None = None  # <!-- example: NAME -->: python blocks of one example run as one script


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker comment on the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = lines[start - 1].strip() if start else ""
        file_m, example_m = FILE_MARKER.match(before), EXAMPLE_MARKER.match(before)
        blocks.append(Block(path.name, start + 1, m.group(1), "\n".join(body) + "\n",
                            file=file_m.group(1) if file_m else None,
                            example=example_m.group(1) if example_m else None))
        i += 1
    return blocks


@dataclass
class Command:
    text: str  # as written (continuations joined), comments included: bash reads them as comments
    doc: str
    line: int

    @property
    def key(self) -> str:
        """The command without its trailing ``# comment`` (what a skip table names)."""
        return re.split(r"\s{2,}#", self.text, maxsplit=1)[0].strip()


def block_commands(block: Block) -> list[Command]:
    """The commands of a bash block: one per line, ``\\``-continued lines joined; comment lines dropped."""
    commands, pending, first = [], "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            first = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append(Command(pending + line.strip() if pending else line.strip(), block.doc, first))
        pending = ""
    return commands


def server_port(command: str) -> int | None:
    """The port a server command listens on, or None when the command is not a server."""
    words = shlex.split(command.split("  #")[0])
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before the command
        words.pop(0)
    default = next((port for prefix, port in SERVERS.items() if tuple(words[:len(prefix)]) == prefix), None)
    if default is None:
        return None
    for flag in ("--port", "-p"):
        if flag in words:
            return int(words[words.index(flag) + 1])
    return default


@dataclass
class Runner:
    project: Path
    env: dict[str, str]
    skip: Mapping[str, str]
    log: list[str] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)
    timeout: float = 600

    def run_doc(self, doc: Path) -> None:
        examples: dict[str, list[Block]] = {}
        for block in fenced_blocks(doc):
            if block.file:
                target = self.project / block.file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.text, encoding="utf-8")
                self.log.append(f"{doc.name}:{block.line}: wrote {block.file}")
            elif block.lang == "bash":
                self.run_block(block)
            elif block.lang == "python" and block.example:
                examples.setdefault(block.example, []).append(block)
        for name, blocks in examples.items():
            script = self.project / f"docs_example_{name}.py"
            script.write_text("\n".join(b.text for b in blocks), encoding="utf-8")
            self.run(Command(f"python {script.name}", doc.name, blocks[0].line))

    def run_block(self, block: Block) -> None:
        with contextlib.ExitStack() as servers:  # each stopped, then its port let go, when the block ends
            for command in block_commands(block):
                if command.key in self.skip:
                    self.skipped.add(command.key)
                    self.log.append(f"{command.doc}:{command.line}: skipped ({self.skip[command.key]}): {command.key}")
                    continue
                port = server_port(command.text)
                if port is None:
                    self.run(command)
                else:
                    servers.enter_context(holding_port(port))
                    servers.callback(stop, self.start_server(command, port))

    def resolved(self, command: Command) -> str:
        """The command with each ``<time>`` path replaced by the one folder that matches it."""
        text = command.text
        for word in set(re.findall(r"\S*<time>\S*", text)):
            scheme, path = re.match(r"^(\w+:///)?(.*)$", word).groups()  # sqlite:///runs/... names a path too
            matches = sorted(glob.glob(path.replace("<time>", "*"), root_dir=self.project))  # in time order
            if not matches:
                raise AssertionError(f"{command.doc}:{command.line}: {word} names no folder of the project")
            text = text.replace(word, (scheme or "") + matches[-1])  # the one the newest search printed
        left = PLACEHOLDER.findall(text.split("  #")[0])
        if left:
            raise AssertionError(f"{command.doc}:{command.line}: placeholder {left} in a command a user cannot "
                                 f"type as written: {command.text}")
        return text

    def run(self, command: Command) -> str:
        text = self.resolved(command)
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", text], cwd=self.project, env=self.env, capture_output=True,
                              text=True, timeout=self.timeout)
        out = proc.stdout + proc.stderr
        self.log.append(f"{command.doc}:{command.line}: rc={proc.returncode} {time.monotonic() - t0:.1f}s: {text}")
        if proc.returncode != 0 or "Traceback (most recent call last)" in out:
            raise AssertionError(f"{command.doc}:{command.line}: `{text}` failed (exit {proc.returncode}):\n"
                                 f"{out[-4000:]}")
        return out

    def start_server(self, command: Command, port: int) -> subprocess.Popen:
        text = self.resolved(command)
        log_path = self.project / f"server-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["bash", "-c", text], cwd=self.project, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status < 500:
                        break
            except urllib.error.HTTPError as e:  # a server that answers (404 on /) is up
                if e.code < 500:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise AssertionError(f"{command.doc}:{command.line}: `{text}` did not answer on port {port}:\n"
                                     f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        self.log.append(f"{command.doc}:{command.line}: serving on {port}: {text}")
        return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
