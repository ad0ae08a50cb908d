import os

# Keras 3 serves on TensorFlow unless the deployment picks another backend;
# TensorFlow's C++ start-up chatter is kept out of the server log.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
