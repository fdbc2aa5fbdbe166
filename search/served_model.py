"""The served model's code file (MLflow's models-from-code): logged with every registered ULMFiT model,
it names the model class, so the model is rebuilt by running this code instead of unpickling an object."""
from mlflow.models import set_model

from search.serving import ULMFiTClassifierModel

set_model(ULMFiTClassifierModel())
