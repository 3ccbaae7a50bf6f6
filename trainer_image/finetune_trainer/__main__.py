"""``python -m finetune_trainer --config FILE``: train from a YAML or JSON TrainerConfig; exit with its code.

Exit codes (config.EXIT_*): 0 success; 2 permanent failure (bad config, unknown layer, data schema mismatch,
out of memory, non-finite loss): a retry cannot help; 75 retryable (SIGTERM/SIGINT after saving a checkpoint,
I/O errors): a new attempt resumes from the checkpoint. The summary is written in every case.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from finetune_trainer.config import EXIT_PERMANENT, TrainerConfig
from finetune_trainer.errors import ConfigError, TrainerError
from finetune_trainer.spec_base import RuleViolation


def load_config(path: Path) -> TrainerConfig:
    """Parse and validate a config file; a ConfigError names the first offending field."""
    import yaml
    from pydantic import ValidationError

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"--config {path} is not valid {kind}: {exc}") from exc
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = [str(p) for p in first["loc"]]
        rule = first.get("ctx", {}).get("error")
        if isinstance(rule, RuleViolation):  # a cross-field rule names its field below the object it is on
            path.append(rule.field)
        field = ".".join(path)
        message = first['msg'].removeprefix('Value error, ')
        raise ConfigError(f"{field}: {message}" if field else message, field=field or None) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="TrainerConfig as YAML or JSON")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        logging.getLogger("finetune_trainer").error("%s: %s", exc.reason, exc)
        return EXIT_PERMANENT
    from finetune_trainer.progress import quiet_library_bars

    if not sys.stderr.isatty():  # in a pod or a file, each library bar would leave its frames in the log
        quiet_library_bars()
    from finetune_trainer.train import run

    try:
        run(config, progress_bar=args.progress)
    except TrainerError as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
