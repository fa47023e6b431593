"""`manage.py config_import FILE [--prune]`: apply a config_export file.

The same code path as gateway_sync (``gateway.sync.config_sync``): providers, models, prices,
deployments, groups, users, apps, the `quotas:` and `prompts:` sections, in one transaction,
idempotently. A provider without `api_key` in the file keeps its stored credential.
"""

from __future__ import annotations

from gateway.management.commands.gateway_sync import Command as GatewaySync


class Command(GatewaySync):
    help = (
        "Apply a configuration file written by config_export (the gateway_sync format) in one transaction; "
        "credentials absent from the file are kept."
    )
