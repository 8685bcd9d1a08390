"""The paper's teacher recipe works end to end on real data (Fashion-MNIST)."""

import keras
import pytest

import rkd_keras


@pytest.mark.slow  # an end-to-end training run: a minute or more on 2 cores; .ci/run runs it after the suite
def test_distance_weighted_triplet_teacher_beats_an_untrained_network_on_unseen_classes():
    train = rkd_keras.load_dataset("fashion_mnist", "train", image_size=28, channels=1, augment=False)
    test = rkd_keras.load_dataset("fashion_mnist", "test", image_size=28, channels=1).shuffle(35_000, seed=1)
    recall = rkd_keras.RetrievalRecall(test.take(2000).batch(500))
    teacher = rkd_keras.embedding_model("small_cnn", 64, input_shape=(28, 28, 1), width=16)
    untrained = rkd_keras.recall_at_k(*recall.embed(teacher))[1]

    teacher.compile(keras.optimizers.Adam(3e-3), loss=rkd_keras.TripletLoss(sampling="distance_weighted"))
    batches = rkd_keras.pk_batches(train.take(5000), 5, 12, seed=0, num_batches=80)
    history = teacher.fit(batches, epochs=3, callbacks=[recall], verbose=0).history

    # Measured on an Intel CPU: 0.811 untrained → 0.883 after 240 steps (seeds 1, 2: +3.6, +3.0 points); on
    # an AMD EPYC, whose kernels round differently, 0.8185 → 0.847 (+2.85). The binomial standard error of
    # one Recall@1 on 2,000 items is ~0.8 points, so +2 points is no chance.
    trained = history["val_recall_at_1"][-1]
    assert trained >= untrained + 0.02, (untrained, trained)
