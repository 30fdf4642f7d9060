"""The project's config files, installed with the package as `vbridge_jax.configs`.

Each file defines `get_config(variant)` (ml_collections; `--config=configs/NAME.py[:VARIANT]`
on the command line). A `--config` path that does not exist in the working folder is looked
up here by its file name (`utils.cli.resolve_config`), so the commands work from any folder.
"""
