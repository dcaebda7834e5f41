"""The public API: ``from rabbitry import …`` gives a library user everything, and nothing of
the runnable system leaks into what the library loads."""

from __future__ import annotations

import subprocess
import sys

import rabbitry
import rabbitry.messaging


def test_all_lists_exactly_the_public_names() -> None:
    # As httpx's test_exported_members: a public name missing from __all__, or an __all__
    # entry that is not there, fails.
    public = {name for name in dir(rabbitry) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(rabbitry, name)).__name__ == "module"}
    future = {"annotations"}  # `from __future__ import annotations` binds this name
    assert set(rabbitry.__all__) - {"__version__"} == public - modules - future
    assert len(set(rabbitry.__all__)) == len(rabbitry.__all__), "a name listed twice"


def test_a_library_user_finds_everything_the_docs_name_at_the_top() -> None:
    wanted = {
        "Message",
        "Publisher",
        "Route",
        "PublishResult",
        "Worker",
        "Subscription",
        "Retry",
        "Reject",
        "work_queue",
        "Topology",
        "Declarer",
        "Settings",
        "load_settings",
        "AmqpSettings",
        "RetryPolicy",
        "serve",
        "RabbitryError",
        "BrokerError",
        "BrokerUnavailable",
        "PublishFailed",
        "MessageError",
        "StorageError",
        "ConfigError",
        "NotFound",
    }
    assert wanted <= set(rabbitry.__all__)


def test_the_messaging_public_names_are_the_same_objects_at_the_top() -> None:
    for name in rabbitry.messaging.__all__:
        assert getattr(rabbitry, name) is getattr(rabbitry.messaging, name), name


def test_the_error_tree_is_rooted_in_rabbitry_error() -> None:
    errors = [getattr(rabbitry, n) for n in rabbitry.__all__ if n.endswith(("Error", "Found"))]
    errors += [rabbitry.BrokerUnavailable, rabbitry.PublishNacked, rabbitry.PublishTimeout]
    for error in errors:
        assert issubclass(error, rabbitry.RabbitryError), error


def test_importing_the_library_loads_no_web_orm_template_or_cli_code() -> None:
    probe = (
        "import sys, rabbitry, rabbitry.messaging\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'typer', 'jinja2', 'alembic'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_settings_repr_masks_the_broker_password() -> None:
    amqp = rabbitry.AmqpSettings(url="amqp://app:s3cret@broker.internal:5672/prod")
    assert "s3cret" not in repr(amqp)
    assert "app:***@broker.internal:5672" in repr(amqp)
    assert "s3cret" not in repr(rabbitry.Settings(amqp_url="amqp://u:s3cret@h/").amqp)
