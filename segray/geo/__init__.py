"""Geodata: GeoTIFF and Cloud-Optimized GeoTIFF scenes read and written with GDAL (rasterio).

Satellite scenes and orthomosaics carry more than 8-bit RGB: many bands (Sentinel-2 has ten or more),
16-bit or float values, a nodata value or mask, a CRS and a transform that give every pixel a place
and an area on the ground. The modules here keep all of that:

- :mod:`segray.geo.gdalenv`: local paths and ``s3://`` URIs as GDAL paths, with GDAL's S3 settings
  made from the same AWS environment that :mod:`segray.storage` reads;
- :mod:`segray.geo.scene`: open a scene, describe it (:class:`~segray.geo.scene.SceneInfo`), pick
  bands, read block-aligned windows with their valid-pixel mask;
- :mod:`segray.geo.areas`: ground area per pixel (projected or geographic CRS) and per class;
- :mod:`segray.geo.cog`: write class masks (and confidences) as Cloud-Optimized GeoTIFFs, window by
  window;
- :mod:`segray.geo.scenejson`: a scene's grid as JSON, carried in a labelling batch to the writer;
- :mod:`segray.geo.bandstats`: per-band mean and std over scenes (``segray data band-stats``), the
  normalisation a band model is made with.

GDAL is imported only by these modules, so the rest of segray starts without it.
"""
