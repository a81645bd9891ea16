"""scikit-learn compatible estimators trained by gpunn: ``from gpunn.sklearn import MLPClassifier``.

:mod:`.estimators` holds the public classes; :mod:`.base` the training shared by both,
:mod:`.network` the gpunn model behind the fitted attributes, :mod:`.inputs` the checks of X and y.
"""

from .estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
