<?php

namespace Runwire\Laravel\View\Components;

use Illuminate\View\Component;
use Runwire\Laravel\Runwire;

/**
 * `<x-runwire::run :run="$run" />`: a run's status, outcome and progress as the server has
 * them now, live until the run is terminal (through `@runwireScripts`). Takes a model or a
 * row with `id`, `status`, `outcome` and `summary_counts` (JSON text or an array).
 */
class Run extends Component
{
    public string $id;

    public string $status;

    public string $outcome;

    public bool $terminal;

    public int $total;

    public int $processed;

    public function __construct(mixed $run)
    {
        $counts = $run->summary_counts ?? null;
        $counts = is_string($counts) ? (json_decode($counts, true) ?: []) : (array) ($counts ?? []);
        $this->id = (string) (is_object($run) && method_exists($run, 'getKey') ? $run->getKey() : $run->id);
        $this->status = (string) ($run->status ?? '');
        $this->outcome = (string) ($run->outcome ?? '');
        $this->terminal = ! Runwire::runIsActive($this->status);
        $this->total = (int) ($counts['total'] ?? 0);
        $this->processed = (int) ($counts['processed'] ?? 0);
    }

    public function render()
    {
        return view('runwire::components.run');
    }
}
