"""aggregate: every model's evaluation -> metrics/history.csv (for `dvc plots`) and an HTML report."""

from mmloop import report, stage

PARAMS = ()
INPUTS = ("metrics/eval",)


def main() -> None:
    stage.begin("aggregate", PARAMS)
    rows = report.collect("metrics/eval")
    report.write_history(rows, "metrics/history.csv")
    report.write_html(rows, "metrics/report.html")
    for row in rows:
        print(f"iteration {row['iteration']}: overall {row['overall']:.3f}")


if __name__ == "__main__":
    main()
