<?php

namespace App\Livewire;

use App\Http\Controllers\OperationsController;
use App\LivewireStandIn\Component;
use Illuminate\Support\Facades\DB;
use Runwire\Laravel\Channel;
use Runwire\Laravel\Livewire\RefreshesOnRunwire;

/**
 * The tenant's review-pack card as a Livewire component. It used to `wire:poll.10s` while
 * the latest pack was queued or generating; now runwire's pushes refresh it. "Generate"
 * writes a new pack and follows it (`runwireFollow`): Livewire registered the component's
 * listeners when it mounted, before that pack existed.
 */
class ReviewPackCard extends Component
{
    use RefreshesOnRunwire;

    public int $tenant;

    protected function refreshOnRunwire(): array
    {
        return [Channel::reviewPack($this->tenant, $this->latestPack())];
    }

    public function generate(): void
    {
        $tenant = DB::table('tenants')->find($this->tenant);
        abort_unless($tenant && OperationsController::isMember((int) auth()->id(), $tenant->workspace_id), 403);
        DB::table('review_packs')->insert(['workspace_id' => $tenant->workspace_id, 'tenant_id' => $tenant->id, 'status' => 'queued']);
        $this->runwireFollow(Channel::reviewPack($this->tenant));
    }

    public function render()
    {
        return view('livewire.review-pack-card', ['pack' => $this->latestPack()]);
    }

    private function latestPack(): ?object
    {
        return DB::table('review_packs')->where('tenant_id', $this->tenant)
            ->orderByDesc('created_at')->orderByDesc('id')->first();
    }
}
