"""scikit-learn compatible estimators trained by gpunn: ``from gpunn.sklearn import MLPClassifier``.

:mod:`.estimators` holds the public classes; :mod:`.base` their parameters, input checks, fit and
predict, :mod:`.training` the training loops, :mod:`.network` the gpunn model behind the fitted
attributes. Needs scikit-learn; ``import gpunn`` does not import it.
"""

from .estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
