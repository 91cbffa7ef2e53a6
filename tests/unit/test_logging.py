from mtrl.logging import Progress, RunLogger, read_metrics


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log(100, {"charts/SPS": 12.5, "losses/qf_loss": 0.25})
        logger.log(200, {"charts/SPS": 13.0})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [100, 200]
    assert records[0]["losses/qf_loss"] == 0.25
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as logger:
        for step in (10, 20, 30):
            logger.log(step, {"x": step})
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 40, "x": ')  # a line torn by a crash
    with RunLogger(tmp_path, tensorboard=False, resume_step=20) as logger:
        logger.log(30, {"x": 31})
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(10, 10), (20, 20), (30, 31)]


def test_progress_bar_shows_steps_and_success(capsys):
    progress = Progress(total_steps=100, initial_step=10)
    progress.set_success(0.5)
    progress.update(50)
    progress.close()
    shown = capsys.readouterr().err
    assert "50.0/100" in shown and "success=0.50" in shown
