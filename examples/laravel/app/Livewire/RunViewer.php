<?php

namespace App\Livewire;

use App\LivewireStandIn\Component;
use Illuminate\Support\Facades\DB;
use Runwire\Laravel\Channel;
use Runwire\Laravel\Livewire\RefreshesOnRunwire;

/**
 * The operation-run viewer as a Livewire component. It used to poll while the run was active
 * (`wire:poll` with an age-based interval); with `RefreshesOnRunwire` it re-renders when
 * runwire pushes a change, at most once per 250 ms, never while the tab is hidden or an
 * action (a modal) is mounted. (With Livewire: `extends Livewire\Component`; with Filament,
 * `mountedActions` and the mount/unmount actions come from its `InteractsWithActions`.)
 */
class RunViewer extends Component
{
    use RefreshesOnRunwire;

    public int $run;

    /** Stands in for Filament's: the actions (modals) open on this component. */
    public array $mountedActions = [];

    protected function refreshOnRunwire(): array
    {
        return [Channel::run($this->row())];
    }

    public function mountAction(string $name): void
    {
        $this->mountedActions[] = $name;
    }

    public function unmountAction(): void
    {
        array_pop($this->mountedActions);
    }

    public function render()
    {
        $row = $this->row();
        $counts = json_decode($row->summary_counts ?? 'null', true) ?: [];

        return view('livewire.run-viewer', ['row' => $row, 'counts' => $counts]);
    }

    private function row(): object
    {
        return DB::table('operation_runs')->find($this->run);
    }
}
