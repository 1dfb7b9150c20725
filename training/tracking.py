"""Optional MLflow tracking of a training run: parameters, per-epoch metrics, the bundle.

    python -m training.train --data DIR --out models/x --mlflow       # to ./mlruns/
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python -m training.train --data DIR --out models/x
    mlflow ui --backend-store-uri ./mlruns                             # look at the runs

Tracking is on with --mlflow, or whenever MLFLOW_TRACKING_URI is set (then the run goes
there). Without that variable runs go to ./mlruns/ (MLflow's file store, which MLflow 3
keeps in maintenance mode: it is allowed here with MLFLOW_ALLOW_FILE_STORE). MLflow is
optional: `pip install mlflow-skinny` (or mlflow); training without tracking never
imports it.
"""

import os
import pathlib

from training.errors import TrainingError

EXPERIMENT = "lung-image-classifier"


def wanted(flag):
    """Track this run? --mlflow, or a tracking server named by MLFLOW_TRACKING_URI."""
    return bool(flag or os.environ.get("MLFLOW_TRACKING_URI"))


class Run:
    """One MLflow run around a training: `callback()` for Keras, `finish()` at the end."""

    def __init__(self, run_name, params):
        try:
            import mlflow
        except ImportError:
            raise TrainingError("MLflow tracking was asked for (--mlflow or MLFLOW_TRACKING_URI) but "
                                "mlflow is not installed: pip install mlflow-skinny") from None
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(pathlib.Path("mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        print(f"MLflow: run {self.run.info.run_id} in {mlflow.get_tracking_uri()}")

    def callback(self):
        """A Keras callback that logs every epoch's losses and metrics, step = epoch."""
        import keras

        def log(epoch, logs):
            self.mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

        return keras.callbacks.LambdaCallback(on_epoch_end=log)

    def finish(self, meta, bundle_dir, status="FINISHED"):
        """Log the held-out figures and the bundle folder (as artifact "bundle"), end the run."""
        if meta:
            for split, m in meta.get("metrics", {}).items():
                self.mlflow.log_metrics({f"{split}_{k}": float(v) for k, v in m.items()
                                         if isinstance(v, (int, float))})
            self.mlflow.log_artifacts(bundle_dir, artifact_path="bundle")
        self.mlflow.end_run(status=status)
