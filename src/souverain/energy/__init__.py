"""Energy and carbon: power sources, attribution of a replica's energy to requests, grid
carbon intensity. Attribution and carbon arithmetic are pure functions."""
