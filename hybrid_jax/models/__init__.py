"""The networks: mel front end, MobileNetV3, BERT, pooling, fusion, the retrieval model, and their loaders."""
