"""FuxiCTR's DCN-v2, run in the peer environment (.bench/fuxictr) by benchmarks/ranking_frappe.py.

FuxiCTR 2.3.10's PyPI wheel has no model zoo, so the model is assembled from its public blocks
(FeatureEmbedding, CrossNetV2, MLP_Block) exactly as its model-zoo DCNv2 does in the parallel
structure, and trained by its BaseModel.fit (Adam, gradient clipping, early stopping on validation
AUC, its reduce-LR-on-plateau). Batches come from memory (no Ray loader), so the timing is of
FuxiCTR's model and training step, not of its data pipeline.

    python fuxictr_dcnv2.py DATA_DIR EPOCHS   # DATA_DIR holds train/valid/test.npz (x, y)
Prints one JSON line: auc, logloss, samples_per_s, train_s, best_epoch.
"""

import json
import logging
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import CrossNetV2, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from sklearn.metrics import log_loss, roc_auc_score

FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
BATCH = 4096


class Batches:
    def __init__(self, x: np.ndarray, y: np.ndarray, shuffle: bool, seed: int = 2026) -> None:
        self.x, self.y, self.shuffle = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // BATCH)

    def __iter__(self):
        order = self.rng.permutation(len(self.y)) if self.shuffle else np.arange(len(self.y))
        for start in range(0, len(order), BATCH):
            idx = torch.from_numpy(order[start : start + BATCH])
            xb = self.x[idx]
            batch = {name: xb[:, j] for j, name in enumerate(FIELDS)}
            batch["label"] = self.y[idx]
            yield batch


class DCNv2(BaseModel):
    def __init__(self, feature_map, **kwargs):
        super().__init__(feature_map, model_id="DCNv2", gpu=-1, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, 10)
        input_dim = feature_map.sum_emb_out_dim()
        self.crossnet = CrossNetV2(input_dim, 3)
        self.parallel_dnn = MLP_Block(
            input_dim=input_dim,
            output_dim=None,
            hidden_units=[400, 400, 400],
            hidden_activations="ReLU",
            output_activation=None,
            dropout_rates=0.2,
            batch_norm=True,
        )
        self.fc = torch.nn.Linear(input_dim + 400, 1)
        self.compile("adam", "binary_crossentropy", 1e-3)
        self.reset_parameters()
        self.model_to_device()
        self.eval_seconds = 0.0

    def forward(self, inputs):
        emb = self.embedding_layer(self.get_inputs(inputs), flatten_emb=True)
        out = self.fc(torch.cat([self.crossnet(emb), self.parallel_dnn(emb)], dim=-1))
        return {"y_pred": self.output_activation(out)}

    def eval_step(self):
        started = time.perf_counter()
        super().eval_step()
        self.eval_seconds += time.perf_counter() - started


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    data, epochs = Path(sys.argv[1]), int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 2026
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    np.random.seed(seed)
    parts = {name: np.load(data / f"{name}.npz") for name in ("train", "valid", "test")}
    x_all = np.concatenate([p["x"] for p in parts.values()])
    fmap = FeatureMap("frappe", tempfile.mkdtemp())
    fmap.labels = ["label"]
    fmap.default_emb_dim = 10
    fmap.features = OrderedDict(
        (name, {"type": "categorical", "source": "", "vocab_size": int(x_all[:, j].max()) + 1})
        for j, name in enumerate(FIELDS)
    )
    fmap.num_fields = fmap.get_num_fields()
    fmap.set_column_index()
    model_root = tempfile.mkdtemp()
    (Path(model_root) / "frappe").mkdir()
    model = DCNv2(
        fmap,
        verbose=0,
        model_root=model_root,
        metrics=["AUC", "logloss"],
        optimizer="adam",
        loss="binary_crossentropy",
        early_stop_patience=3,
    )
    train = Batches(parts["train"]["x"], parts["train"]["y"], shuffle=True, seed=seed)
    valid = Batches(parts["valid"]["x"], parts["valid"]["y"], shuffle=False)
    started = time.perf_counter()
    model.fit(train, epochs=epochs, validation_data=valid, max_gradient_norm=10.0)
    train_s = time.perf_counter() - started - model.eval_seconds
    steps = model._total_steps
    samples = min(steps, len(train) * (model._epoch_index + 1)) * BATCH
    model.load_weights(model.checkpoint)
    pred = model.predict(Batches(parts["test"]["x"], parts["test"]["y"], shuffle=False))
    y = parts["test"]["y"].astype(np.float64)
    print(
        json.dumps(
            {
                "auc": float(roc_auc_score(y, pred)),
                "logloss": float(log_loss(y, np.clip(pred, 1e-7, 1 - 1e-7))),
                "samples_per_s": samples / train_s,
                "train_s": train_s,
                "epochs": model._epoch_index + 1,
            }
        )
    )


if __name__ == "__main__":
    main()
