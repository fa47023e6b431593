# The library prompt a request called by id (prompts.gateway), carried by the usage event.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("quotas", "0004_daily_usage_grains"),
    ]

    operations = [
        migrations.AddField(
            model_name="usageevent",
            name="prompt_id",
            field=models.CharField(blank=True, default="", max_length=36),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="prompt_version",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("prompt_id", ""), _negated=True),
                fields=["prompt_id", "created_at"],
                name="usageevent_prompt",
            ),
        ),
    ]
