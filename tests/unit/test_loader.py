"""``rabbitry run MODULE:APP``'s loader: which names lead to services, and the one-line reason
when one does not (the CLI prints it with exit code 2; tests/e2e/test_run.py runs the command)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rabbitry import AmqpSettings, RetryPolicy, Subscription, Worker, work_queue
from rabbitry.errors import Invalid
from rabbitry.messaging.loader import as_services, load_services, parse_spec

WORKERS = """
import rabbitry

async def handle(message: rabbitry.Message) -> None:
    pass

def _worker(name: str) -> rabbitry.Worker:
    topology = rabbitry.work_queue(name, policy=rabbitry.RetryPolicy())
    return rabbitry.Worker(name, [rabbitry.Subscription(name, handlers={"t": handle})], topology)

worker = _worker("one")
both = [worker, _worker("two")]
class Holder:
    inner = worker
nothing: list[rabbitry.Worker] = []
number = 7
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder holding a module of workers under a name no other test uses."""
    name = f"workers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(WORKERS)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader puts the folder first
    yield tmp_path, name
    sys.modules.pop(name, None)


def worker(name: str) -> Worker:
    async def handle(message: object) -> None:
        pass

    return Worker(
        name, [Subscription(name, handlers={"t": handle})], work_queue(name, policy=RetryPolicy())
    )


def test_a_module_and_an_attribute_name_a_spec() -> None:
    assert parse_spec("shop.workers:worker") == ("shop.workers", "worker")
    assert parse_spec("app:holder.worker") == ("app", "holder.worker")


@pytest.mark.parametrize(
    "spec", ["app", "app:", ":worker", "app:worker:x", "shop..workers:w", "app:1worker", "a b:w"]
)
def test_anything_but_module_colon_app_is_refused_with_the_expected_shape(spec: str) -> None:
    with pytest.raises(Invalid, match=r"is not MODULE:APP \(e\.g\. shop\.workers:worker\)"):
        parse_spec(spec)


def test_a_worker_a_list_and_a_dotted_attribute_load_from_the_app_dir(
    app_dir: tuple[Path, str],
) -> None:
    folder, name = app_dir
    (one,) = load_services(f"{name}:worker", folder)
    assert isinstance(one, Worker) and one.name == "one"
    assert [s.name for s in load_services(f"{name}:both", folder)] == ["one", "two"]
    assert load_services(f"{name}:Holder.inner", folder) == (one,)


def test_a_missing_module_or_attribute_says_which(app_dir: tuple[Path, str]) -> None:
    folder, name = app_dir
    with pytest.raises(Invalid, match=rf"no module 'absent_{name}' in {folder}"):
        load_services(f"absent_{name}:worker", folder)
    with pytest.raises(Invalid, match=rf"module '{name}' has no attribute 'missing'"):
        load_services(f"{name}:missing", folder)


def test_what_is_not_a_service_is_refused_with_its_type(app_dir: tuple[Path, str]) -> None:
    folder, name = app_dir
    with pytest.raises(Invalid, match=rf"{name}:number is a int, not a Worker"):
        load_services(f"{name}:number", folder)
    with pytest.raises(Invalid, match=rf"{name}:nothing is an empty list: nothing to run"):
        load_services(f"{name}:nothing", folder)


def test_an_import_error_inside_the_users_module_is_theirs_and_shown_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ModuleNotFoundError) as raised:
        load_services(f"{name}:worker", tmp_path)
    assert raised.value.name == "not_installed_anywhere_xyz"
    (tmp_path / f"{name}_typo.py").write_text("worker = undefined_name\n")
    with pytest.raises(NameError):
        load_services(f"{name}_typo:worker", tmp_path)


def test_services_are_one_or_a_list_of_objects_with_a_name_and_run() -> None:
    one = worker("x")
    assert as_services(one, "m:a") == (one,)
    assert as_services((one,), "m:a") == (one,)
    with pytest.raises(Invalid, match="m:a is a AmqpSettings, not a Worker"):
        as_services([one, AmqpSettings()], "m:a")
