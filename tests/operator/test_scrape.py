"""Reading trainer progress from its Prometheus page (scrape.py): parsing, rate bound, failures ignored."""

from __future__ import annotations

from finetune_operator.scrape import Scraper, parse_trainer_metrics

PAGE = """\
# HELP finetune_trainer_step Optimizer steps done.
# TYPE finetune_trainer_step gauge
finetune_trainer_step{finetunejob="mrpc"} 50.0
# TYPE finetune_trainer_total_steps gauge
finetune_trainer_total_steps{finetunejob="mrpc"} 200.0
# TYPE finetune_trainer_progress_ratio gauge
finetune_trainer_progress_ratio{finetunejob="mrpc"} 0.25
# TYPE finetune_trainer_eta_seconds gauge
finetune_trainer_eta_seconds{finetunejob="mrpc"} 301.7
# TYPE finetune_trainer_train_loss gauge
finetune_trainer_train_loss{finetunejob="mrpc"} 0.6931
# TYPE finetune_trainer_eval_loss gauge
finetune_trainer_eval_loss{finetunejob="mrpc"} NaN
# TYPE finetune_trainer_eval_metric gauge
finetune_trainer_eval_metric{finetunejob="mrpc",metric="eval_accuracy"} 0.75
finetune_trainer_eval_metric{finetunejob="mrpc",metric="eval_f1"} 0.8
finetune_trainer_eval_metric{finetunejob="mrpc",metric="eval_rougeL"} 0.3
# TYPE finetune_trainer_trainable_parameters gauge
finetune_trainer_trainable_parameters{finetunejob="mrpc"} 1024.0
# TYPE finetune_trainer_total_parameters gauge
finetune_trainer_total_parameters{finetunejob="mrpc"} 4096.0
# TYPE finetune_trainer_learning_rate gauge
finetune_trainer_learning_rate{finetunejob="mrpc"} 2e-05
# TYPE finetune_trainer_mfu_ratio gauge
finetune_trainer_mfu_ratio{finetunejob="mrpc"} 0.41
# TYPE finetune_trainer_gpu_memory_peak_bytes gauge
finetune_trainer_gpu_memory_peak_bytes{finetunejob="mrpc"} 1.5e9
# TYPE finetune_trainer_samples counter
finetune_trainer_samples_total{finetunejob="mrpc"} 4000.0
# TYPE finetune_trainer_checkpoints_created gauge
finetune_trainer_checkpoints_created{finetunejob="mrpc"} 1.7e9
# TYPE finetune_trainer_checkpoint_save_seconds_created gauge
finetune_trainer_checkpoint_save_seconds_created{finetunejob="mrpc"} 1.7e9
# TYPE finetune_trainer_tokens counter
finetune_trainer_tokens_total{finetunejob="mrpc"} 1e6
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 3.0
"""


def test_parse_maps_gauges_to_status_fields():
    parsed = parse_trainer_metrics(PAGE)
    assert parsed["progress"] == {"step": 50, "totalSteps": 200, "percent": 25.0, "etaSeconds": 301}
    # Only training metrics: NaN (not measured yet), counters, *_created timestamps (an older trainer's, or a custom
    # image's), GPU memory, MFU and other exporters' metrics are left out; one camel-case rule (evalRougeL).
    assert parsed["metrics"] == {"trainLoss": 0.6931, "learningRate": 2e-05, "evalAccuracy": 0.75, "evalF1": 0.8,
                                 "evalRougeL": 0.3}
    assert parsed["parameters"] == {"trainable": 1024, "total": 4096}


def test_reads_are_rate_bounded_and_failures_ignored():
    calls = []
    clock = [0.0]

    def fetcher(url, timeout):
        calls.append((url, timeout))
        if len(calls) == 2:
            raise OSError("connection refused")
        return PAGE

    scraper = Scraper(9090, 2.0, min_interval=15, fetcher=fetcher, clock=lambda: clock[0])
    first = scraper.read("ml/mrpc", "10.0.0.5")
    assert first["progress"]["step"] == 50
    assert calls == [("http://10.0.0.5:9090/metrics", 2.0)]
    clock[0] = 10
    assert scraper.read("ml/mrpc", "10.0.0.5") == first  # within the interval: cached, no request
    assert len(calls) == 1
    clock[0] = 20
    assert scraper.read("ml/mrpc", "10.0.0.5") is None  # unreachable: no progress, no exception
    clock[0] = 40
    scraper.forget("ml/mrpc")
    assert scraper.read("ml/mrpc", "fd00::5")["progress"]["step"] == 50
    assert calls[-1][0] == "http://[fd00::5]:9090/metrics"
