"""What a finished sweep's trials table turns into, under results/<name>/.

    leaderboard  per-configuration statistics over seeds, the choice per method family by
                 validation accuracy, and the tables (csv, markdown, html)
    figures      the PNG figures of a trials table
    report       the W&B report, and the same content as report.md
    outputs      the one driver that writes all of the above from trials.csv

The trials table itself is hero_bench.trials; docs/results.md describes every file.
"""
