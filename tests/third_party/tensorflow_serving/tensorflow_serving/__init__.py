# moatkit glue, not from tensorflow/serving. The pip package tensorflow-serving-api installs a regular package
# `tensorflow_serving` (apis/, config/) that would hide this tree; extend_path merges every `tensorflow_serving/`
# on sys.path into one package, so the upstream test finds model_servers/ and servables/ here and apis/ there.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
