"""The ``--cron`` config of the chaos cron scenario (the file ``rq cron`` takes): one tick a second onto
``chaos-cron``, a queue no worker serves, so every tick stays queued to be counted."""

from rq import cron

from tests.chaos import jobs

CRON_QUEUE = "chaos-cron"

cron.register(jobs.sync_work, CRON_QUEUE, args=("cron-tick", 0.0), interval=1, name="chaos-tick")
