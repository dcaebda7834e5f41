"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests.

No container runtime or cluster exists on the machines that run these tests, so the files are
checked as the tools that read them would: the Kubernetes resources against the API's schemas
(PyPI's kubernetes-validate, strict: an unknown or misspelt field fails), the compose file
against the Compose specification's JSON schema (vendored in tests/schemas/), and every command
an image runs is parsed by Rabbitry's own CLI. What runs for real is the local equivalent
(scripts/cluster and the processes), in the e2e and fault tests.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import yaml

from helpers import schema_validator
from rabbitry._version import __version__
from rabbitry.app import registry
from rabbitry.cli.app import command as cli_command
from rabbitry.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes release the manifests are meant for, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version() + ".0"]
UID = 10001  # the image's user (deploy/Dockerfile)


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes manifest file's resources, by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def resources(kind: str | None = None) -> list[dict[str, Any]]:
    return [r for docs in manifests().values() for r in docs if kind in (None, r["kind"])]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def exec_form(instruction: str) -> list[str]:
    (value,) = [json.loads(args) for name, args in dockerfile() if name == instruction]
    assert isinstance(value, list)
    return [str(item) for item in value]


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    return spec


def parse_command(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Parse ``rabbitry ARGS`` the way the CLI does, without running it: the sub-command path
    and the leaf command's parameters. A usage error raises."""
    assert argv[0] == "rabbitry", argv
    command: Any = cli_command()
    context = command.make_context("rabbitry", list(argv[1:]))
    path: list[str] = []
    while hasattr(command, "resolve_command"):  # a group: descend into the sub-command
        # click keeps the group's unparsed words in _protected_args (the public spelling is
        # deprecated, and warnings are errors here).
        rest = [*context._protected_args, *context.args]
        name, command, words = command.resolve_command(context, rest)
        path.append(name)
        context = command.make_context(name, words, parent=context)
        command = context.command  # a part's command stands in for it until it is parsed
    return path, dict(context.params)


def image_commands() -> Iterator[tuple[str, list[str]]]:
    """Every command a Rabbitry container runs, with where it is written."""
    entrypoint = exec_form("ENTRYPOINT")
    yield "Dockerfile", [*entrypoint, *exec_form("CMD")]
    for name, service in compose()["services"].items():
        if "build" in service:  # a Rabbitry service (the others run public images)
            yield f"compose.yaml {name}", [*entrypoint, *service["command"]]
    for resource in resources():
        if resource["kind"] in ("Deployment", "Job"):
            for container in containers(resource):
                where = f"{resource['kind']} {resource['metadata']['name']}"
                yield where, [*container.get("command", entrypoint), *container["args"]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_resource_is_valid_for_the_kubernetes_api(version: str) -> None:
    checked = 0
    for resource in resources():
        kubernetes_validate.validate(resource, version, strict=True)
        checked += 1
    assert {r["kind"] for r in resources()} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "Job",
        "PodDisruptionBudget",
    }
    assert checked >= 20


def test_the_kubernetes_validation_catches_a_misspelt_field() -> None:
    (chat,) = [r for r in resources("Deployment") if r["metadata"]["name"] == "rabbitry-chat"]
    chat["spec"]["replica"] = chat["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(chat, KUBERNETES_VERSIONS[0], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_secret_example_and_the_job() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == set(manifests()) - {"secret.example.yaml", "migrate-job.yaml"}


def test_the_compose_file_is_valid_compose() -> None:
    validator = schema_validator("compose-spec.json")
    document = compose()
    assert list(validator.iter_errors(document)) == []
    chat = document["services"]["chat"]
    chat["comand"] = chat.pop("command")  # a misspelt key is refused
    assert len(list(validator.iter_errors(document))) == 1


def test_every_command_an_image_runs_is_a_real_rabbitry_command() -> None:
    seen: set[tuple[str, ...]] = set()
    for where, argv in image_commands():
        path, params = parse_command(argv)
        seen.add(tuple(path))
        if path == ["serve"]:
            assert params["name"] in registry.servers(), where
        if path == ["worker"]:
            assert set(params["names"]) <= set(registry.services()), where
        if path in (["serve"], ["up"]):
            # In a container, 127.0.0.1 (the default) is unreachable from outside.
            assert params["host"] == "0.0.0.0", where
    assert seen == {("up",), ("serve",), ("worker",), ("db", "upgrade")}
    with pytest.raises(Exception, match="--prot"):
        parse_command(["rabbitry", "serve", "chat", "--prot", "8000"])


def test_every_server_and_worker_runs_in_both_deployments() -> None:
    for system, prefixes in (("compose", ("compose.yaml",)), ("kubernetes", ("Deployment",))):
        ran: set[str] = set()
        for where, argv in image_commands():
            if where.startswith(prefixes):
                path, params = parse_command(argv)
                ran |= {params["name"]} if path == ["serve"] else set(params.get("names", ()))
        assert ran == set(registry.servers()) | set(registry.services()), system


def test_every_process_that_serves_http_is_probed_at_livez_and_readyz_on_its_port() -> None:
    probed = 0
    for deployment in resources("Deployment"):
        for container in containers(deployment):
            _, params = parse_command([*container["command"], *container["args"]])
            if params.get("port") is None:  # no HTTP (today's workers): nothing to probe
                assert not {"readinessProbe", "livenessProbe", "ports"} & set(container)
                continue
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"http": params["port"]}
            for probe, where in (
                ("readinessProbe", "/readyz"),
                ("livenessProbe", "/livez"),
                ("startupProbe", "/livez"),
            ):
                assert container[probe]["httpGet"] == {"path": where, "port": "http"}
            probed += 1
    assert probed >= len(registry.servers())


def test_gateways_leave_the_service_before_they_drain_and_drain_before_they_are_killed() -> None:
    (config,) = resources("ConfigMap")
    drain = float(config["data"]["RABBITRY_DRAIN_TIMEOUT"])
    (chat,) = [r for r in resources("Deployment") if r["metadata"]["name"] == "rabbitry-chat"]
    (container,) = containers(chat)
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = chat["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pause[1]) + drain
    for deployment in resources("Deployment"):
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_pods_run_as_the_images_non_root_user_with_the_configmap_and_the_secret() -> None:
    (config,) = resources("ConfigMap")
    (secret,) = resources("Secret")
    assert dict(dockerfile())["USER"] == f"{UID}:{UID}"
    for resource in [*resources("Deployment"), *resources("Job")]:
        pod = resource["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["envFrom"] == [
                {"configMapRef": {"name": config["metadata"]["name"]}},
                {"secretRef": {"name": secret["metadata"]["name"]}},
            ]


def test_each_disruption_budget_selects_a_deployment_with_replicas_to_spare() -> None:
    deployments = {
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())): d
        for d in resources("Deployment")
    }
    budgets = resources("PodDisruptionBudget")
    assert "rabbitry-chat" in {b["metadata"]["name"] for b in budgets}
    for budget in budgets:
        selected = deployments[tuple(sorted(budget["spec"]["selector"]["matchLabels"].items()))]
        assert selected["spec"]["replicas"] > budget["spec"]["maxUnavailable"]


def test_the_image_is_multi_stage_and_its_last_stage_holds_only_the_installed_package() -> None:
    instructions = dockerfile()
    stages = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(stages) == 2
    final = instructions[stages[-1] :]
    copies = [args for name, args in final if name in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/rabbitry /opt/rabbitry"]
    ignored = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    assert ignored[1:5] == ["*", "!pyproject.toml", "!README.md", "!src/"]


def test_the_images_are_tagged_with_the_package_version() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "rabbitry", "newTag": __version__}]
    (job,) = resources("Job")
    assert {c["image"] for c in containers(job)} == {f"rabbitry:{__version__}"}
    assert compose()["x-rabbitry"]["image"] == f"${{RABBITRY_IMAGE:-rabbitry:{__version__}}}"


def _environment(values: dict[str, Any]) -> dict[str, Any]:
    """RABBITRY_* values as Settings fields; ${VAR} placeholders get a stand-in value (as long
    as a real admin token must be)."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        assert name.startswith("RABBITRY_"), name
        key = name.removeprefix("RABBITRY_").lower()
        assert key in Settings.model_fields, f"{name} is no setting"
        fields[key] = re.sub(r"\$\{[^}]+\}", "stand-in-of-the-operators-value", str(value))
    return fields


def test_both_deployments_pass_the_production_checks_with_known_settings_only() -> None:
    from_compose = Settings(**_environment(compose()["x-rabbitry"]["environment"]))
    (config,) = resources("ConfigMap")
    (secret,) = resources("Secret")
    from_kubernetes = Settings(**_environment({**config["data"], **secret["stringData"]}))
    for settings in (from_compose, from_kubernetes):
        assert settings.env == "production"
        assert settings.production_gaps() == []
        assert settings.queue_type == "quorum"
        assert settings.amqp_url.get_secret_value().count(",") == 2  # three nodes


def guide_commands() -> Iterator[str]:
    """The ``rabbitry`` command lines of docs/operations.md: in its ``sh`` blocks and after the
    ``$`` prompts of its ``console`` blocks (``NAME=value`` prefixes, redirections and ``#``
    comments left out), and in its inline code."""
    text = (DEPLOY.parent / "docs" / "operations.md").read_text()
    for language, block in re.findall(r"```(sh|console)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if language == "console" and not line.startswith("$ "):
                continue  # what a command printed
            lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(itertools.takewhile(lambda w: w not in (">", "|", "&&", ";"), lexer))
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words.pop(0)
            if words[:1] == ["rabbitry"]:
                yield shlex.join(words)
    for span in re.findall(r"`(rabbitry [^`]*)`", text):
        if "…" not in span:
            yield span


def test_every_rabbitry_command_in_the_operations_guide_is_real() -> None:
    commands = set(guide_commands())
    for command in commands:
        path, params = parse_command(shlex.split(command))
        if path == ["serve"]:
            assert params["name"] in registry.servers(), command
        if path == ["worker"]:
            assert set(params["names"]) <= set(registry.services()), command
    assert len(commands) >= 15
