"""discovery stage: hyperbolic k-means, elbow, cluster labelling with GT anchors, AP and purity
(Weng et al. 2021, 3.3 and 4)."""

from longtail.discovery.elbow import elbow_curve, knee_point
from longtail.discovery.kmeans import HyperbolicKMeans, einstein_midpoints, poincare_dist

__all__ = ["HyperbolicKMeans", "einstein_midpoints", "elbow_curve", "knee_point", "poincare_dist"]
