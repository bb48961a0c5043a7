<?php

namespace Runwire\Laravel\View\Components;

use Illuminate\Support\Facades\DB;
use Illuminate\View\Component;
use Runwire\Laravel\Runwire;

/**
 * `<x-runwire::review-pack :tenant="$tenant" />`: the tenant's latest review pack as the
 * server has it now (pass `:pack` if the page already loaded it; else it is read like runwire
 * reads it: newest `created_at`, then highest id), live while it is queued or generating.
 * Dispatch `runwire:follow` on the element after the page requested a new pack to follow it.
 */
class ReviewPack extends Component
{
    public string $tenantId;

    public ?string $packId;

    public string $status;

    public bool $terminal;

    public function __construct(mixed $tenant, mixed $pack = false, public string $none = 'No review pack yet')
    {
        $this->tenantId = (string) (is_object($tenant) && method_exists($tenant, 'getKey') ? $tenant->getKey() : ($tenant->id ?? $tenant));
        if ($pack === false) {
            $pack = DB::table('review_packs')->where('tenant_id', $this->tenantId)
                ->orderByDesc('created_at')->orderByDesc('id')->first();
        }
        $this->packId = $pack ? (string) $pack->id : null;
        $this->status = $pack ? (string) $pack->status : 'none';
        $this->terminal = ! Runwire::packIsActive($pack->status ?? null);
    }

    public function render()
    {
        return view('runwire::components.review-pack');
    }
}
