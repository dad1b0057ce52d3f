"""RISE saliency through preprocessing -> encoder -> scaler -> saved probe: the estimator for any
black box (:mod:`.saliency`), the stage over caches (:mod:`.explain`), figures, and where burnt-in
text is (:mod:`.text_boxes`)."""
from .explain import (ImageChoice, RiseMaps, RiseRun, cache_encoder, choose_images, explain_cache,
                      random_probe, run_rise)
from .figures import plot_rise_grid, plot_rise_panels
from .saliency import (RiseConfig, RiseResult, deletion_insertion_auc, iter_masks, mass_in_region,
                       pointing_game, rise_saliency)
from .text_boxes import boxes_mask, detect_text_boxes, read_box_file

__all__ = ["ImageChoice", "RiseConfig", "RiseMaps", "RiseResult", "RiseRun", "boxes_mask",
           "cache_encoder", "choose_images", "deletion_insertion_auc", "detect_text_boxes",
           "explain_cache", "iter_masks", "mass_in_region", "plot_rise_grid", "plot_rise_panels",
           "pointing_game", "random_probe", "read_box_file", "rise_saliency", "run_rise"]
