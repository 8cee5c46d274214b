"""The obp package's off-policy estimators, run in the peer environment (.bench/obp) by
benchmarks/ope_obd.py on the same rows and the same target distribution as recstack's.

    python obp_ope.py INPUT.npz SEED
INPUT holds action, position (0-based), reward, pscore, context (n, d), action_context (A, d'),
action_dist (n, A, K). Prints one JSON line: {estimator: value} for IPW, SNIPW, DM, DR.
The reward model is obp's RegressionModel over a scikit-learn LogisticRegression, cross-fitted with
three folds, as obp's own OBD example does.
"""

import json
import logging
import sys

import numpy as np
from obp.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    OffPolicyEvaluation,
    RegressionModel,
    SelfNormalizedInverseProbabilityWeighting,
)
from sklearn.linear_model import LogisticRegression

logging.disable(logging.WARNING)


def main() -> None:
    data = np.load(sys.argv[1])
    seed = int(sys.argv[2])
    action_dist = data["action_dist"]
    n_actions, len_list = action_dist.shape[1], action_dist.shape[2]
    feedback = {
        "n_rounds": len(data["action"]),
        "action": data["action"],
        "position": data["position"],
        "reward": data["reward"],
        "pscore": data["pscore"],
        "context": data["context"],
    }
    model = RegressionModel(
        n_actions=n_actions,
        len_list=len_list,
        action_context=data["action_context"],
        base_model=LogisticRegression(max_iter=1000, C=100, random_state=seed),
    )
    q = model.fit_predict(
        context=feedback["context"],
        action=feedback["action"],
        reward=feedback["reward"],
        position=feedback["position"],
        pscore=feedback["pscore"],
        n_folds=3,
        random_state=seed,
    )
    ope = OffPolicyEvaluation(
        bandit_feedback=feedback,
        ope_estimators=[
            InverseProbabilityWeighting(),
            SelfNormalizedInverseProbabilityWeighting(),
            DirectMethod(),
            DoublyRobust(),
        ],
    )
    values = ope.estimate_policy_values(action_dist=action_dist, estimated_rewards_by_reg_model=q)
    print(json.dumps({k: float(v) for k, v in values.items()}))


if __name__ == "__main__":
    main()
