"""The GraphQL half of scripts/ui_check.sh: talks to a running Dagster webserver (stdlib only).

    python scripts/ui_graphql.py location URL            -> "LOCATION REPOSITORY" holding full_pipeline
    python scripts/ui_graphql.py dismiss-nux URL         -> marks the "Join the community" modal seen
    python scripts/ui_graphql.py launch URL LOC REPO JOB -> launches the job, prints the run id
    python scripts/ui_graphql.py wait-run URL RUN_ID SECONDS -> exits 0 on SUCCESS, 1 with the errors
    python scripts/ui_graphql.py graph-url URL           -> the global asset lineage, groups expanded

Exits non-zero with a message on stderr whenever something is not as expected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

WORKSPACE = """{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename
      ... on RepositoryLocation { name repositories { name jobs { name } } }
      ... on PythonError { message stack } } } }
  ... on PythonError { message } } }"""

LAUNCH = """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on PythonError { message stack }
  ... on Error { message } } }"""

STATUS = """query Status($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { status } ... on Error { message } } }"""

FAILURE_EVENTS = """query Errors($id: ID!) { logsForRun(runId: $id, limit: 100000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on RunFailureEvent { message }
    ... on EngineEvent { message error { message } } } }
  ... on Error { message } } }"""

GROUPS = "{ assetNodes { groupName } }"

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class CheckFailed(Exception):
    pass


def gql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.load(response)
    if reply.get("errors"):
        raise CheckFailed(f"GraphQL errors: {json.dumps(reply['errors'])[:2000]}")
    return reply["data"]


def location(url: str, job: str = "full_pipeline", timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while True:
        workspace = gql(url, WORKSPACE)["workspaceOrError"]
        if workspace["__typename"] != "Workspace":
            raise CheckFailed(f"workspace error: {workspace.get('message')}")
        entries = workspace["locationEntries"]
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"code locations not loaded after {timeout:.0f} s: {entries}")
        time.sleep(2)
    for entry in entries:
        loaded = entry["locationOrLoadError"]
        if loaded["__typename"] == "PythonError":
            stack = "".join(loaded.get("stack") or [])
            raise CheckFailed(f"code location {entry['name']} failed to load: {loaded['message']}\n{stack}")
        for repository in loaded["repositories"]:
            if any(j["name"] == job for j in repository["jobs"]):
                return f"{entry['name']} {repository['name']}"
    raise CheckFailed(f"no repository has a job named {job}: {entries}")


def dismiss_nux(url: str) -> str:
    if gql(url, "mutation { setNuxSeen }")["setNuxSeen"] is not True:
        raise CheckFailed("setNuxSeen did not answer true")
    if gql(url, "{ shouldShowNux }")["shouldShowNux"] is not False:
        raise CheckFailed("the community modal would still show after setNuxSeen")
    return "nux seen"


def launch(url: str, location_name: str, repository: str, job: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": location_name,
            "repositoryName": repository,
            "jobName": job,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "convrec/trigger", "value": "ui_check"}]},
    }
    result = gql(url, LAUNCH, {"params": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise CheckFailed(f"launchRun answered {result['__typename']}: {json.dumps(result)[:2000]}")
    return result["run"]["runId"]


def run_errors(url: str, run_id: str) -> list[str]:
    logs = gql(url, FAILURE_EVENTS, {"id": run_id})["logsForRun"]
    errors = []
    for event in logs.get("events", []):
        kind = event["__typename"]
        error = (event.get("error") or {}).get("message")
        if kind == "ExecutionStepFailureEvent":
            errors.append(f"step {event['stepKey']}: {error}")
        elif kind == "RunFailureEvent":
            errors.append(f"run: {event['message']}")
        elif kind == "EngineEvent" and error:
            errors.append(f"engine: {event['message']}: {error}")
    return errors or [f"(no failure events; logsForRun answered {logs['__typename']})"]


def wait_run(url: str, run_id: str, timeout: float) -> str:
    deadline, last, started = time.monotonic() + timeout, None, time.monotonic()
    while True:
        run = gql(url, STATUS, {"id": run_id})["runOrError"]
        status = run.get("status") or f"{run['__typename']}: {run.get('message')}"
        if status != last:
            print(
                f"[ui_graphql] run {run_id}: {status} after {time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
            last = status
        if status == "SUCCESS":
            return f"run {run_id} succeeded in {time.monotonic() - started:.0f} s"
        if status in FINISHED or run["__typename"] != "Run":
            raise CheckFailed(f"run {run_id} ended {status}:\n" + "\n".join(run_errors(url, run_id)))
        if time.monotonic() > deadline:
            raise CheckFailed(f"run {run_id} still {status} after {timeout:.0f} s")
        time.sleep(5)


def graph_url(url: str) -> str:
    """The global lineage page with every group expanded (the UI's `expanded` query parameter;
    group ids are `global@global:<group>`), so the screenshot shows assets, not group boxes."""
    groups = sorted({node["groupName"] for node in gql(url, GROUPS)["assetNodes"] if node["groupName"]})
    if not groups:
        raise CheckFailed("the webserver reports no asset groups")
    expanded = ",".join(f"global@global:{group}" for group in groups)
    return f"{url}/asset-groups?{urllib.parse.urlencode({'expanded': expanded})}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("location").add_argument("url")
    commands.add_parser("dismiss-nux").add_argument("url")
    commands.add_parser("graph-url").add_argument("url")
    launch_args = commands.add_parser("launch")
    for name in ("url", "location", "repository", "job"):
        launch_args.add_argument(name)
    wait_args = commands.add_parser("wait-run")
    for name in ("url", "run_id"):
        wait_args.add_argument(name)
    wait_args.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    try:
        if args.command == "location":
            print(location(args.url))
        elif args.command == "dismiss-nux":
            print(dismiss_nux(args.url))
        elif args.command == "graph-url":
            print(graph_url(args.url))
        elif args.command == "launch":
            print(launch(args.url, args.location, args.repository, args.job))
        else:
            print(wait_run(args.url, args.run_id, args.timeout))
    except (CheckFailed, OSError) as err:
        print(f"[ui_graphql] {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
