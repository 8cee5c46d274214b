"""What serving loads, below both training and serving: the bundle format, the rankers' servables
(ONNX Runtime for the neural ones, NumPy for logistic regression, LightGBM for GBDT), calibration
and the ONNX session helper. Nothing here imports torch or training code; training writes these
formats and serving reads them."""
