"""The annotated landmarks every fastlmk data set gives, in MAFL order (``item["landmarks"]``
row i is ``LANDMARK_NAMES[i]``); landmarks 0 and 1, the eye centres, set the inter-ocular
distance of the evaluation."""

LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth", "right mouth")
EYES = (0, 1)  # indices of the two eye centres
