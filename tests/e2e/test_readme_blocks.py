"""Every shell block of the README (and of docs/*.md) is run by a test of the suite.

`WHO_RUNS` says, for each block (file, section heading, index in the section), who runs it:
another test (which reads the block from the README and runs it as written), this module
(against a real `souverain up`), or nobody, with why (a build of hours, the suite itself).
A block with no entry, or whose text changed since its entry was written (the digest), fails
here, and so does an entry naming a test that does not exist: an example that nobody runs
cannot creep in. The blocks this module runs go through bash as written, one command at a
time (exports carry over), after the substitutions of `PLACEHOLDERS`; every command must
exit 0, or fail with the error its own comment documents.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import Up

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
HERE = "tests/e2e/test_readme_blocks.py"


def live(test: Callable[..., None]) -> Callable[..., None]:
    """A test that runs blocks against a real `souverain up` (embedded Ray, llama.cpp)."""
    marked: Callable[..., None] = pytest.mark.ray(pytest.mark.engine(pytest.mark.slow(test)))
    return marked


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository root
    heading: str  # the nearest heading above it, without its #'s
    index: int  # its rank among the shell blocks of that section
    text: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.document, self.heading, self.index)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:10]


def shell_blocks(path: Path) -> list[Block]:
    """The shell blocks of a Markdown file, named by their section and rank in it."""
    blocks: list[Block] = []
    heading, rank, inside, lines = "", 0, None, []
    for line in path.read_text().splitlines():
        if inside is None and line.startswith("```"):
            inside = bool(FENCE.match(line))
            lines = []
        elif inside is not None and line.startswith("```"):
            if inside:
                text = "\n".join(lines) + "\n"
                blocks.append(Block(str(path.relative_to(ROOT)), heading, rank, text))
                rank += 1
            inside = None
        elif inside is not None:
            lines.append(line)
        elif line.startswith("#"):
            heading, rank = line.lstrip("#").strip(), 0
    return blocks


@dataclass(frozen=True)
class RunBy:
    test: str  # path::Class::test or path::test, a test that runs the block as written


@dataclass(frozen=True)
class NotRun:
    why: str


R = "README.md"
FLEET = "tests/fleet/test_hosts.py::TestReadmeFleet::test_each_tenant_is_served_by_the_host_its_policy_allows"  # fmt: skip
WHO_RUNS: dict[tuple[str, str, int], tuple[str, RunBy | NotRun]] = {
    (R, "Two commands", 0): ("689ce3128e", NotRun("`make up` installs then serves until Ctrl-C; "
                                         "`make test` is CI's own command (.ci/run)")),
    (R, "Two commands", 1): ("e763f696f1", NotRun("CI's own command: .ci/run runs `make test` with it")),
    (R, "Call it", 0): ("5102e45f34", RunBy(f"{HERE}::test_the_cli_and_curl_blocks_run_as_written")),
    (R, "The CLI", 0): ("1bbfa052fc", RunBy(f"{HERE}::test_the_cli_and_curl_blocks_run_as_written")),
    (R, "Single sign-on, SCIM and service accounts", 0): ("0fa41404e7", RunBy(
        "tests/identity/test_readme.py::"
        "test_the_readme_commands_configure_sign_in_scim_and_service_accounts")),
    (R, "Engine builds", 0): ("3977339c0f", NotRun("compiles llama.cpp again (minutes; CUDA needs "
                                          "an NVIDIA toolkit); CI builds the default flags")),
    (R, "Engine builds", 1): ("e3d2ee8aca", RunBy(f"{HERE}::test_the_engine_and_reasoning_blocks_run")),
    (R, "Running it for real", 0): ("9d8853c499", RunBy(FLEET)),
    (R, "Running it for real", 1): ("839d3236a1", RunBy(FLEET)),
    (R, "Running it for real", 2): ("e90fe73c15", RunBy(FLEET)),
    (R, "Running it for real", 3): ("30260f3ce9", RunBy(FLEET)),
    (R, "Running it for real", 4): ("5c3df9dbaf", RunBy(FLEET)),
    (R, "Fine-tuning", 0): ("910d033ebe", RunBy(f"{HERE}::test_the_fine_tuning_block_trains_a_model")),
    (R, "Reasoning models", 0): ("1c12814e3d", RunBy(f"{HERE}::test_the_engine_and_reasoning_blocks_run")),
    (R, "Reasoning models", 1): ("9c13d0b80e", RunBy(f"{HERE}::test_the_engine_and_reasoning_blocks_run")),
    (R, "Data controls", 0): ("cf44bb9284", RunBy(f"{HERE}::test_the_data_controls_block_runs")),
    (R, "Data controls", 1): ("52e6abe73e", RunBy(
        "tests/e2e/test_up.py::TestExportAndErasure::"
        "test_the_readme_exports_an_organisation_then_erases_it_with_proof")),
    (R, "Development", 0): ("4a890125ca", NotRun("CI's `make test` runs `make lint` and every test of "
                                        "`make unit`; bench and screenshots print figures and "
                                        "pictures, 10 M records take most of an hour")),
}  # fmt: skip


def every_block() -> list[Block]:
    return [block for document in DOCUMENTS for block in shell_blocks(document)]


def test_every_shell_block_says_who_runs_it() -> None:
    blocks = {block.key: block for block in every_block()}
    unrun = [f"{key}: {blocks[key].text[:60]!r}" for key in blocks if key not in WHO_RUNS]
    assert not unrun, "blocks nobody runs (add them to WHO_RUNS):\n" + "\n".join(unrun)
    gone = [key for key in WHO_RUNS if key not in blocks]
    assert not gone, f"WHO_RUNS names blocks that no longer exist: {gone}"
    changed = [f"{key}: now {blocks[key].digest}" for key, (digest, _) in WHO_RUNS.items()
               if digest != blocks[key].digest]  # fmt: skip
    assert not changed, (
        "blocks changed since their entry: check that their test still runs them as written, "
        "then put the new digest in WHO_RUNS:\n" + "\n".join(changed)
    )


def defined_tests(path: Path) -> set[str]:
    """`test_x` and `TestY::test_x` for every test function of a module (read, not imported)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}  # fmt: skip
    return {name for name in names if name.split("::")[-1].startswith("test_")}


def test_every_named_runner_exists() -> None:
    missing = []
    for _, runner in WHO_RUNS.values():
        if isinstance(runner, RunBy):
            module, _, name = runner.test.partition("::")
            path = ROOT / module
            if not path.is_file() or name not in defined_tests(path):
                missing.append(runner.test)
    assert not missing, f"WHO_RUNS names tests that do not exist: {missing}"


def test_not_run_blocks_stay_few_and_say_why() -> None:
    skipped = [runner for _, runner in WHO_RUNS.values() if isinstance(runner, NotRun)]
    assert len(skipped) <= 4 and all(len(runner.why) > 20 for runner in skipped)


# --- the blocks run here -------------------------------------------------------------------


@dataclass
class Shell:
    """bash in one directory, one command at a time; what a command exports carries over."""

    cwd: Path
    env: dict[str, str]
    seen: dict[str, list[str]] = field(default_factory=dict)  # captures, in order

    def run(self, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        saved = self.cwd / ".env-after"
        script = f"{command}\nenv -0 > {saved}\n"
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.cwd,
                             env=self.env, input=stdin, capture_output=True, text=True,
                             timeout=600, check=False)  # fmt: skip
        if ran.returncode == 0:
            pairs = saved.read_text().split("\0")
            self.env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        for name, pattern in CAPTURES.items():
            self.seen.setdefault(name, []).extend(re.findall(pattern, ran.stdout))
        return ran


CAPTURES = {  # what later commands name, read from earlier commands' output
    "key": r"key (\S+) \(",
    "file": r"uploaded (\S+):",
    "output": r"output: (\S+)",
    "job": r"created (\S+) \(",
}


@dataclass(frozen=True)
class Substitution:
    example: str  # as the README writes it
    value: Callable[[Up, Shell], str]  # what this installation has instead


def last(name: str) -> Callable[[Up, Shell], str]:
    return lambda up, shell: shell.seen[name][-1]


PLACEHOLDERS = [
    Substitution("<id>", last("key")),  # the project key just made, then revoked
    Substitution("<key-id>", lambda up, shell: shell.seen["key"][0]),  # alice's owner key
    Substitution("http://127.0.0.1:8000", lambda up, shell: up.url),
    Substitution("~/.local/share/souverain", lambda up, shell: str(up.data_dir)),
    Substitution(
        "~/.config/souverain/owner.key", lambda up, shell: str(up.config.with_name("owner.key"))
    ),
    Substitution(
        "batches create file_…", lambda up, shell: f"batches create {last('file')(up, shell)}"
    ),
    Substitution("download file_…", lambda up, shell: f"download {last('output')(up, shell)}"),
    Substitution("create file_…", lambda up, shell: f"create {last('file')(up, shell)}"),
    Substitution("ftjob_…", last("job")),
    # The CLI block made a deployment `mine`; the engine block's would wait for its deletion.
    Substitution(
        "deployments create mine --model smollm2",
        lambda up, shell: "deployments create mine-2 --model smollm2",
    ),
]
SKIPPED = {  # command start -> why it is not run here
    "souverain deployments create mine-ft": "needs a fine-tuned model: run once the"
    " Fine-tuning block has made one (test_the_fine_tuning_block_trains_a_model)",
    "SOUVERAIN_LLAMACPP_RUNTIME=": "a second installation; tests/e2e/test_up_failure.py"
    " starts `up` with this setting",
    "souverain finetune create FILE_": "the GRPO recipe takes hours on CPU; tests/e2e/"
    "test_grpo.py trains the same recipe (cold start, then GRPO) at a tiny scale",
}
FAILS_WITH = {  # command start -> the error its README comment documents
    "souverain finetune cancel": "has already succeeded",
}


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines left."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip


def run_block(up: Up, shell: Shell, heading: str, index: int = 0, stdin: str = "") -> str:
    """Runs the block's commands; what they printed."""
    printed = []
    (block,) = [b for b in shell_blocks(ROOT / "README.md") if b.key == (R, heading, index)]
    for command in commands(block.text):
        if any(command.startswith(start) for start in SKIPPED):
            continue
        for substitution in PLACEHOLDERS:
            if substitution.example in command:
                command = command.replace(substitution.example, substitution.value(up, shell))
        ran = shell.run(command, stdin)
        expected = next((e for start, e in FAILS_WITH.items() if command.startswith(start)), None)
        said = ran.stdout + ran.stderr
        printed.append(ran.stdout)
        if expected is None:
            assert ran.returncode == 0, f"{heading}: {command}\n{said}"
        else:
            assert ran.returncode != 0 and expected in said, f"{heading}: {command}\n{said}"
    return "".join(printed)


def shell_for(up: Up, cwd: Path) -> Shell:
    bin_dir = str(Path(sys.executable).parent)
    env = up.env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "200"}
    return Shell(cwd=cwd, env=env)


def batch_line() -> str:
    body = {"model": "smollm2-135m-instruct", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say 1."}]}  # fmt: skip
    return json.dumps({"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
                       "body": body}) + "\n"  # fmt: skip


@live
def test_the_cli_and_curl_blocks_run_as_written(up: Up, tmp_path: Path) -> None:
    """The CLI reference, from an organisation to a batch's answers, then curl with its key."""
    from souverain.node.artifacts import builtin_path

    models = up.data_dir / "models"
    models.mkdir(exist_ok=True)
    (models / "model.gguf").write_bytes(builtin_path("smollm2-135m-instruct").read_bytes())
    (tmp_path / "eco2mix-hourly.csv").write_text("hour,g_per_kwh\n2026-11-01T00:00,56\n")
    (tmp_path / "requests.jsonl").write_text(batch_line())
    shell = shell_for(up, tmp_path)
    run_block(up, shell, "The CLI", stdin="Bonjour !\n")
    assert (tmp_path / "answers.jsonl").read_text().count('"custom_id"') == 1
    assert json.loads((tmp_path / "residency.json").read_text())["signature"]
    assert list(csv_rows(tmp_path / "usage.csv"))
    shell.env["KEY"] = up.config.with_name("owner.key").read_text().strip()
    answer = json.loads(run_block(up, shell, "Call it"))
    assert answer["choices"][0]["message"]["content"], answer


def csv_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.count(",") >= 2]


@live
def test_the_engine_and_reasoning_blocks_run(up: Up, tmp_path: Path) -> None:
    """A deployment with engine arguments, a reasoning model registered with its tags, and
    the GRPO recipe's data prepared and uploaded (its training left to tests/e2e/test_grpo)."""
    from souverain.node.artifacts import builtin_path

    models = up.data_dir / "models"
    models.mkdir(exist_ok=True)
    (models / "magistral.gguf").write_bytes(builtin_path("smollm2-135m-instruct").read_bytes())
    shell = shell_for(up, tmp_path)
    run_block(up, shell, "Engine builds", 1)
    run_block(up, shell, "Reasoning models", 0)
    assert "magistral-small" in up.cli("models", "list").stdout
    shell.env["SOUVERAIN_API_KEY"] = up.config.with_name("owner.key").read_text().strip()
    run_block(up, shell, "Reasoning models", 1)
    assert len((tmp_path / "heldout.jsonl").read_text().splitlines()) == 150


@live
def test_the_fine_tuning_block_trains_a_model(up: Up, tmp_path: Path) -> None:
    """Upload, `finetune create … --follow` until it ends, then list, show and events; the
    cancel line is refused, as its comment says, since the job has ended. Then the CLI
    block's `--shared` deployment, of the model just made."""
    line = {"messages": [{"role": "user", "content": "Ahoy?"},
                         {"role": "assistant", "content": "Arr."}]}  # fmt: skip
    (tmp_path / "chats.jsonl").write_text(json.dumps(line) + "\n")
    shell = shell_for(up, tmp_path)
    shell.env["SOUVERAIN_API_KEY"] = up.config.with_name("owner.key").read_text().strip()
    printed = run_block(up, shell, "Fine-tuning")
    made = re.search(r"succeeded (ft:\S+)", printed)
    assert made, printed
    (block,) = [b for b in shell_blocks(ROOT / "README.md") if b.key == (R, "The CLI", 0)]
    (shared,) = [
        c for c in commands(block.text) if c.startswith("souverain deployments create mine-ft")
    ]
    operator = shell_for(up, tmp_path)  # deployments are the operator's, as in that block
    mine = shared.replace("ft:smollm2:acme:x:ftjob_1", made[1]).replace("acme", "default")
    ran = operator.run(mine)  # the model is the organisation `default`'s
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "shared" in operator.run("souverain deployments list").stdout


@live
def test_the_data_controls_block_runs(up: Up, tmp_path: Path) -> None:
    """Zero retention and windows for `acme` (made by the CLI block, or here)."""
    if "acme" not in up.cli("orgs", "list").stdout:
        up.cli("orgs", "create", "acme", "--owner", "alice")
    run_block(up, shell_for(up, tmp_path), "Data controls")
    assert "zero" in up.cli("data-controls", "show", "--org", "acme").stdout.lower()
